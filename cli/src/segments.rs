//! `shmex list`, `shmex inspect` and `shmex clean`: thin printing over [`shmex::inspect`].

use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;
use shmex::inspect::{self, Occupancy, Removal, SegmentReport, SideReport};
use shmex::inspect::{CONTROL_LEN, LAYOUT_VERSION, MAGIC, RING_MAGIC};
use shmex::link::Liveness;
use shmex::segment::{self, SegmentName};

use crate::format;
use crate::Failure;

/// Exit status of `inspect` when the segment is corrupt.
const CORRUPT_EXIT: u8 = 3;

/// Arguments of `shmex list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only segments whose name starts with this (for example `shmex.site-1.`).
    #[arg(long, default_value = segment::NAME_PREFIX)]
    prefix: String,
    /// How long to watch the heartbeats, in milliseconds [default: 1.5 × the longest
    /// heartbeat interval announced, between 100 ms and 3 s].
    #[arg(long, value_name = "MS")]
    window_ms: Option<u64>,
}

/// Arguments of `shmex inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The segment's name, as `shmex list` shows it (`shmex.<site>.<agent>`).
    #[arg(value_parser = parse_name)]
    name: SegmentName,
    /// How long to watch the heartbeats, in milliseconds [default: as for `list`].
    #[arg(long, value_name = "MS")]
    window_ms: Option<u64>,
}

/// Arguments of `shmex clean`.
#[derive(Args, Debug)]
pub struct CleanArgs {
    /// Show what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Only segments whose name starts with this.
    #[arg(long, default_value = segment::NAME_PREFIX)]
    prefix: String,
}

fn parse_name(text: &str) -> Result<SegmentName, String> {
    SegmentName::new(text).map_err(|e| e.to_string())
}

fn names_with_prefix(prefix: &str) -> Result<Vec<SegmentName>, Failure> {
    let names =
        segment::list_names().map_err(|e| Failure::new(format!("listing /dev/shm: {e}")))?;
    Ok(names
        .into_iter()
        .filter(|n| n.as_str().starts_with(prefix))
        .collect())
}

/// `shmex list`.
pub fn list(args: &ListArgs) -> Result<(), Failure> {
    let names = names_with_prefix(&args.prefix)?;
    if names.is_empty() {
        println!(
            "no shmex segments (names starting with {:?}) on this host",
            args.prefix
        );
        return Ok(());
    }
    let reports = inspect::observe(&names, args.window_ms.map(Duration::from_millis));
    let width = reports
        .iter()
        .map(|r| r.name.as_str().len())
        .max()
        .unwrap_or(0)
        .max(4);
    println!(
        "{:<width$}  {:>9}  {:<7}  {:<24}  {:<24}  {:>6}  {:>6}",
        "NAME", "SIZE", "STATUS", "EXCHANGER", "AGENT", "TASKS", "RESULTS"
    );
    for report in &reports {
        let size = report.file_len.map(format::bytes).unwrap_or_default();
        let status = if report.is_corrupt() {
            format!("{}!", report.occupancy().as_str())
        } else {
            report.occupancy().as_str().to_string()
        };
        let side = |i: usize| {
            report
                .sides
                .get(i)
                .map(|s| side_cell(s, report.window))
                .unwrap_or_else(|| "?".into())
        };
        let fill = |i: usize| {
            report
                .rings
                .get(i)
                .map(|r| match r.fill() {
                    Some(fill) if r.capacity > 0 => {
                        format!("{:.0}%", 100.0 * fill as f64 / r.capacity as f64)
                    }
                    _ => "bad".into(),
                })
                .unwrap_or_else(|| "?".into())
        };
        println!(
            "{:<width$}  {:>9}  {:<7}  {:<24}  {:<24}  {:>6}  {:>6}",
            report.name.as_str(),
            size,
            status,
            side(0),
            side(1),
            fill(0),
            fill(1)
        );
    }
    let corrupt = reports.iter().filter(|r| r.is_corrupt()).count();
    if corrupt > 0 {
        println!("! = corrupt contents ({corrupt}): see `shmex inspect NAME`");
    }
    Ok(())
}

/// One side in a table cell: `pid 1234 alive hb 0.2 s`.
fn side_cell(side: &SideReport, window: Duration) -> String {
    let verdict = verdict_word(side.liveness);
    let pid = side.snapshot.pid;
    match side.heartbeat_age(window) {
        Some(age) if matches!(side.liveness, Liveness::Alive) => {
            format!("{pid} {verdict} hb<{}", format::duration(age))
        }
        Some(age) => format!("{pid} {verdict} hb {}", format::duration(age)),
        None if pid == 0 => verdict.to_string(),
        None => format!("{pid} {verdict}"),
    }
}

fn verdict_word(liveness: Liveness) -> &'static str {
    match liveness {
        Liveness::Absent => "absent",
        Liveness::Alive => "alive",
        Liveness::Stale { .. } => "stale",
        Liveness::Dead { .. } => "dead",
        Liveness::Closed => "closed",
        Liveness::Corrupt { .. } => "corrupt",
    }
}

/// `shmex inspect NAME`.
pub fn inspect(args: &InspectArgs) -> Result<(), Failure> {
    let report = inspect::observe_one(&args.name, args.window_ms.map(Duration::from_millis))?;
    print!("{}", describe(&report));
    if report.is_corrupt() {
        return Err(Failure {
            message: format!(
                "segment {} is corrupt: {}",
                report.name.as_str(),
                report.problems[0]
            ),
            code: CORRUPT_EXIT,
        });
    }
    Ok(())
}

fn check(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "WRONG"
    }
}

fn yes_no(held: Option<bool>) -> &'static str {
    match held {
        Some(true) => "held",
        Some(false) => "free",
        None => "unknown",
    }
}

/// The full report of `inspect`.
fn describe(report: &SegmentReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "segment   {}", report.name.as_str());
    if let Some(len) = report.file_len {
        let _ = writeln!(out, "file      {len} bytes ({})", format::bytes(len));
    }
    let _ = writeln!(
        out,
        "status    {} (owner lock {})",
        report.occupancy().as_str(),
        yes_no(report.owner_lock_held)
    );
    let verdict = if report.is_corrupt() {
        format!("CORRUPT ({} problems)", report.problems.len())
    } else {
        "consistent".to_string()
    };
    let _ = writeln!(out, "contents  {verdict}");
    if let Some(h) = &report.header {
        let now = shmex::inspect::unix_millis();
        let _ = writeln!(out, "\nheader");
        let _ = writeln!(
            out,
            "  magic            {:#018x} {}",
            h.magic,
            check(h.magic == MAGIC)
        );
        let _ = writeln!(
            out,
            "  layout version   {} {}",
            h.layout_version,
            check(h.layout_version == LAYOUT_VERSION)
        );
        let _ = writeln!(
            out,
            "  control block    {} bytes {}",
            h.control_len,
            check(h.control_len as usize == CONTROL_LEN)
        );
        let _ = writeln!(
            out,
            "  segment length   {} bytes {}",
            h.segment_len,
            check(Some(h.segment_len) == report.file_len)
        );
        let _ = writeln!(
            out,
            "  task ring        offset {}, capacity {}",
            h.task_ring_offset,
            format::bytes(h.task_ring_capacity)
        );
        let _ = writeln!(
            out,
            "  result ring      offset {}, capacity {}",
            h.result_ring_offset,
            format::bytes(h.result_ring_capacity)
        );
        let _ = writeln!(
            out,
            "  created          by pid {}, {} ago",
            h.creator_pid,
            format::duration(Duration::from_millis(now.saturating_sub(h.created_unix_ms)))
        );
        let _ = writeln!(out, "\nsides");
        for side in &report.sides {
            let s = &side.snapshot;
            let state = s
                .state
                .map(|st| format!("{st:?}").to_lowercase())
                .unwrap_or_else(|| format!("invalid word {}", s.state_word));
            let attached = if s.attached_unix_ms == 0 {
                "never attached".to_string()
            } else {
                let ago = Duration::from_millis(now.saturating_sub(s.attached_unix_ms));
                format!("attached {} ago", format::duration(ago))
            };
            let _ = writeln!(
                out,
                "  {:<9}  {}\n             pid {}, state {state}, role lock {}, epoch {}, \
                 heartbeat {} every {}, {attached}",
                side.role.name(),
                side_cell(side, report.window),
                s.pid,
                yes_no(side.lock_held),
                s.epoch,
                s.heartbeat,
                format::duration(s.heartbeat_interval),
            );
        }
    }
    if !report.rings.is_empty() {
        let _ = writeln!(out, "\nrings");
        for ring in &report.rings {
            let fill = match ring.fill() {
                Some(fill) => format!("{} in flight", format::bytes(fill)),
                None => "positions inconsistent".into(),
            };
            let _ = writeln!(
                out,
                "  {:<6}  magic {}, capacity {}, data at {}, head {}, tail {}: {fill}",
                ring.ring,
                check(ring.magic == RING_MAGIC),
                format::bytes(ring.capacity),
                ring.data_offset,
                ring.head,
                ring.tail
            );
        }
    }
    if report.is_corrupt() {
        let _ = writeln!(out, "\nproblems");
        for problem in &report.problems {
            let _ = writeln!(out, "  - {problem}");
        }
    }
    out
}

/// `shmex clean`.
pub fn clean(args: &CleanArgs) -> Result<(), Failure> {
    let names = names_with_prefix(&args.prefix)?;
    let (mut removed, mut kept) = (0usize, 0usize);
    if args.dry_run {
        for name in &names {
            match inspect::occupancy(name) {
                Ok(Some(Occupancy::Dead)) => {
                    removed += 1;
                    println!("would remove {}", name.as_str());
                }
                Ok(Some(other)) => {
                    kept += 1;
                    println!("keep {} ({})", name.as_str(), other.as_str());
                }
                Ok(None) => {}
                Err(e) => {
                    kept += 1;
                    println!("keep {} (cannot check: {e})", name.as_str());
                }
            }
        }
        println!("dry run: would remove {removed}, keep {kept}");
        return Ok(());
    }
    for name in &names {
        match inspect::remove_if_dead(name) {
            Ok(Removal::Removed) => {
                removed += 1;
                println!("removed {}", name.as_str());
            }
            Ok(Removal::Live) => {
                kept += 1;
                println!("keep {} (live)", name.as_str());
            }
            Ok(Removal::Vanished) => {}
            Err(e) => {
                kept += 1;
                println!("keep {} (cannot check: {e})", name.as_str());
            }
        }
    }
    println!("removed {removed}, kept {kept}");
    Ok(())
}
