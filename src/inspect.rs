//! Looking after the segments on a host: reading one segment's control block and ring headers
//! from outside (without attaching), deciding whether anyone still uses it, and removing the
//! ones whose every side is dead. This is what `shmex list`, `shmex inspect` and `shmex clean`
//! print and do.
//!
//! Everything read here was written by other processes and is untrusted: values are decoded
//! with the same checks an opener makes (`control::validate`), inconsistencies are collected
//! as [`SegmentReport::problems`] instead of being acted on, and nothing read from the segment
//! sizes an allocation or an index.
//!
//! Liveness comes from the operating system, as everywhere in shmex: a side is alive while its
//! process holds the OFD lock on its byte of the segment (`control::role_lock_held`), and
//! the segment's owner while it holds the owner lock ([`segment::owner_lock_held`]). The
//! heartbeat is watched over a short window only to tell a responsive side from a hung one.
#![deny(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::control::{self, Liveness, PeerMonitor, SideSnapshot};
use crate::layout::{Role, SegmentPlan, OWNER_LOCK_BYTE};
use crate::segment::{self, OpenError, Reclaim, Segment, SegmentName};
use crate::sync::Ordering;
use crate::sys::{self, LockAttempt, SysError};

pub use crate::layout::{CONTROL_LEN, LAYOUT_VERSION, MAGIC, RING_MAGIC};
pub use crate::sys::unix_millis;

/// Longest heartbeat-watch window [`observe`] derives from the intervals the sides announce
/// (an announced interval is untrusted: a scribbled one must not make `list` hang).
pub const MAX_WATCH_WINDOW: Duration = Duration::from_secs(3);

/// Whether anyone still uses a segment, by the OS locks of its owner and its two sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Occupancy {
    /// At least one lock is held: the owner or a side is alive. Never removed.
    Live,
    /// No lock is held: every process that used the segment is gone. Safe to remove.
    Dead,
    /// The locks could not be probed (for example, no permission to open the segment).
    Unknown,
}

impl Occupancy {
    /// Lower-case word used by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Occupancy::Live => "live",
            Occupancy::Dead => "dead",
            Occupancy::Unknown => "unknown",
        }
    }
}

/// The segment header's fields, as found (raw and unchecked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderFields {
    /// Magic number ([`crate::layout::MAGIC`] in a shmex segment).
    pub magic: u64,
    /// Layout version word (0 while the creator has not finished).
    pub layout_version: u32,
    /// Control block length.
    pub control_len: u32,
    /// Segment length the creator recorded.
    pub segment_len: u64,
    /// Offset of the task ring header.
    pub task_ring_offset: u64,
    /// Data bytes of the task ring.
    pub task_ring_capacity: u64,
    /// Offset of the result ring header.
    pub result_ring_offset: u64,
    /// Data bytes of the result ring.
    pub result_ring_capacity: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Pid of the creating process.
    pub creator_pid: u32,
}

/// One side of the link, as found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SideReport {
    /// Which side.
    pub role: Role,
    /// Its side block (untrusted values).
    pub snapshot: SideSnapshot,
    /// Whether its process holds the role lock; `None` if the probe failed.
    pub lock_held: Option<bool>,
    /// The verdict after watching the heartbeat for the report's window.
    pub liveness: Liveness,
}

impl SideReport {
    /// How long the heartbeat has been still, as far as the watch window tells: `Some(d)` with
    /// `d` below the window if it advanced during the window, `None` if the side is not
    /// attached (absent, closed, dead or corrupt: no heartbeat is expected).
    pub fn heartbeat_age(&self, window: Duration) -> Option<Duration> {
        match self.liveness {
            Liveness::Alive => Some(window),
            Liveness::Stale { silent_for } => Some(silent_for),
            _ => None,
        }
    }
}

/// One ring header, as found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingReport {
    /// "task" or "result".
    pub ring: &'static str,
    /// Offset of its header in the segment.
    pub offset: u64,
    /// Ring magic word ([`RING_MAGIC`] when intact).
    pub magic: u64,
    /// Capacity recorded in the ring header.
    pub capacity: u64,
    /// Offset of the data region recorded in the ring header.
    pub data_offset: u64,
    /// Consumer position.
    pub head: u64,
    /// Producer position.
    pub tail: u64,
}

impl RingReport {
    /// Bytes published and not yet released (`tail - head`), or `None` if the positions are
    /// inconsistent (head past tail, or more than the capacity in flight).
    pub fn fill(&self) -> Option<u64> {
        let fill = self.tail.checked_sub(self.head)?;
        (fill <= self.capacity).then_some(fill)
    }
}

/// Everything `shmex inspect` knows about one segment. Built by [`observe`]; it never fails
/// on bad contents: what is wrong is listed in [`SegmentReport::problems`].
#[derive(Clone, Debug)]
pub struct SegmentReport {
    /// The segment's name.
    pub name: SegmentName,
    /// Length of the file in `/dev/shm`; `None` if it could not be opened.
    pub file_len: Option<u64>,
    /// Whether the owner (the creating exchanger) holds its lock; `None` if not probed.
    pub owner_lock_held: Option<bool>,
    /// The header fields; `None` if the segment could not be mapped.
    pub header: Option<HeaderFields>,
    /// The layout the header describes, if it passed every check of `control::validate`.
    pub plan: Option<SegmentPlan>,
    /// Both sides, exchanger first; empty if the segment could not be mapped.
    pub sides: Vec<SideReport>,
    /// Ring headers that lie inside the segment (task first).
    pub rings: Vec<RingReport>,
    /// Everything found wrong, one line each; empty for a healthy segment.
    pub problems: Vec<String>,
    /// How long the heartbeats were watched.
    pub window: Duration,
}

impl SegmentReport {
    /// Whether anyone still uses the segment (see [`Occupancy`]).
    pub fn occupancy(&self) -> Occupancy {
        let mut locks = vec![self.owner_lock_held];
        locks.extend(self.sides.iter().map(|s| s.lock_held));
        if self.sides.is_empty() || locks.iter().any(Option::is_none) {
            // A segment we could not map may still have its locks probed by `clean`.
            return if locks.contains(&Some(true)) {
                Occupancy::Live
            } else {
                Occupancy::Unknown
            };
        }
        if locks.contains(&Some(true)) {
            Occupancy::Live
        } else {
            Occupancy::Dead
        }
    }

    /// Whether something is wrong with the segment's contents.
    pub fn is_corrupt(&self) -> bool {
        !self.problems.is_empty()
    }
}

/// What [`remove_if_dead`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// Every lock was free: the segment was unlinked.
    Removed,
    /// A side or the owner is alive: left alone.
    Live,
    /// The name no longer existed (removed by someone else meanwhile).
    Vanished,
}

/// Removes segment `name` only if its owner and both sides are dead.
///
/// Both role locks are taken (through a private open of the segment) while
/// [`segment::reclaim`] takes the owner lock and unlinks, so no process can attach to the
/// segment or claim it in between; a held lock leaves the segment untouched. The locks go when
/// this call returns.
pub fn remove_if_dead(name: &SegmentName) -> Result<Removal, SysError> {
    let fd = match sys::shm_open_existing(name.as_str()) {
        Ok(fd) => fd,
        Err(SysError::NotFound { .. }) => return Ok(Removal::Vanished),
        Err(e) => return Err(e),
    };
    for role in Role::ALL {
        if sys::try_lock_byte(&fd, role.lock_byte())? == LockAttempt::HeldElsewhere {
            return Ok(Removal::Live);
        }
    }
    Ok(match segment::reclaim(name)? {
        Reclaim::OwnerAlive => Removal::Live,
        Reclaim::Removed => Removal::Removed,
        Reclaim::Vanished => Removal::Vanished,
    })
}

/// Whether anyone still uses segment `name`, from its three locks alone (nothing is read
/// from the segment and no lock is taken): what [`remove_if_dead`] would decide now. `None`
/// if there is no such segment.
pub fn occupancy(name: &SegmentName) -> Result<Option<Occupancy>, SysError> {
    let fd = match sys::shm_open_existing(name.as_str()) {
        Ok(fd) => fd,
        Err(SysError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    for byte in [
        Role::Exchanger.lock_byte(),
        Role::Agent.lock_byte(),
        OWNER_LOCK_BYTE,
    ] {
        if sys::byte_locked_elsewhere(&fd, byte)? {
            return Ok(Some(Occupancy::Live));
        }
    }
    Ok(Some(Occupancy::Dead))
}

/// The watch window [`observe`] uses when none is given: one and a half of the longest
/// heartbeat interval a side announced, at least 100 ms and at most [`MAX_WATCH_WINDOW`].
pub fn default_window(sides: &[SideSnapshot]) -> Duration {
    let longest = sides
        .iter()
        .map(|s| s.heartbeat_interval)
        .max()
        .unwrap_or_default();
    (longest.saturating_mul(3) / 2).clamp(Duration::from_millis(100), MAX_WATCH_WINDOW)
}

/// A segment opened for a report, with its heartbeat monitors running.
struct Watched {
    name: SegmentName,
    segment: Result<Arc<Segment>, OpenError>,
    monitors: Vec<PeerMonitor>,
}

/// Reports on each segment in `names`, watching all their heartbeats together for `window`
/// (`None`: [`default_window`] of every side seen). A segment that vanished meanwhile is
/// left out; one that cannot be opened is reported with the error as a problem.
pub fn observe(names: &[SegmentName], window: Option<Duration>) -> Vec<SegmentReport> {
    let watched: Vec<Watched> = names
        .iter()
        .map(|name| {
            let segment = Segment::open(name, false).map(Arc::new);
            let monitors = match &segment {
                Ok(segment) => Role::ALL
                    .iter()
                    .map(|&role| PeerMonitor::new(Arc::clone(segment), role))
                    .collect(),
                Err(_) => Vec::new(),
            };
            Watched {
                name: name.clone(),
                segment,
                monitors,
            }
        })
        .filter(|w| !matches!(w.segment, Err(OpenError::NotFound { .. })))
        .collect();
    let window = window.unwrap_or_else(|| {
        let sides: Vec<SideSnapshot> = watched
            .iter()
            .filter_map(|w| w.segment.as_ref().ok())
            .filter_map(|s| control::control_block(s))
            .flat_map(|c| Role::ALL.map(|role| control::snapshot(c, role)))
            .collect();
        default_window(&sides)
    });
    let start = Instant::now();
    std::thread::sleep(window);
    let window = start.elapsed();
    watched.into_iter().map(|w| report(w, window)).collect()
}

/// Reports on one segment (see [`observe`]); a missing segment is an error.
pub fn observe_one(
    name: &SegmentName,
    window: Option<Duration>,
) -> Result<SegmentReport, OpenError> {
    if segment::owner_lock_held(name)
        .map_err(|source| OpenError::Sys {
            name: name.clone(),
            source,
        })?
        .is_none()
    {
        return Err(OpenError::NotFound { name: name.clone() });
    }
    observe(std::slice::from_ref(name), window)
        .pop()
        .ok_or_else(|| OpenError::NotFound { name: name.clone() })
}

fn report(watched: Watched, window: Duration) -> SegmentReport {
    let Watched {
        name,
        segment,
        mut monitors,
    } = watched;
    let mut report = SegmentReport {
        owner_lock_held: segment::owner_lock_held(&name).ok().flatten(),
        name,
        file_len: None,
        header: None,
        plan: None,
        sides: Vec::new(),
        rings: Vec::new(),
        problems: Vec::new(),
        window,
    };
    let segment = match segment {
        Ok(segment) => segment,
        Err(e) => {
            if let OpenError::BadLength { len, .. } = e {
                report.file_len = Some(len);
            }
            report.problems.push(e.to_string());
            return report;
        }
    };
    let file_len = match segment.file_len() {
        Ok(len) => len,
        Err(e) => {
            report
                .problems
                .push(format!("reading the file length: {e}"));
            return report;
        }
    };
    report.file_len = Some(file_len);
    if file_len < segment.len() as u64 {
        // Reading past the new end of the file would fault: stop at the control block, or
        // before it if it is gone too.
        report.problems.push(format!(
            "file shrank to {file_len} bytes after it was mapped ({} bytes)",
            segment.len()
        ));
        if file_len < CONTROL_LEN as u64 {
            return report;
        }
    }
    let Some(control) = control::control_block(&segment) else {
        report.problems.push(format!(
            "segment of {} bytes cannot hold a control block ({CONTROL_LEN} bytes)",
            segment.len()
        ));
        return report;
    };
    let h = &control.header;
    let header = HeaderFields {
        magic: h.magic.load(Ordering::Relaxed),
        // SYNC: pairs with the Release store that publishes the layout version in
        // `control::initialize`.
        layout_version: h.layout_version.load(Ordering::Acquire),
        control_len: h.control_len.load(Ordering::Relaxed),
        segment_len: h.segment_len.load(Ordering::Relaxed),
        task_ring_offset: h.task_ring_offset.load(Ordering::Relaxed),
        task_ring_capacity: h.task_ring_capacity.load(Ordering::Relaxed),
        result_ring_offset: h.result_ring_offset.load(Ordering::Relaxed),
        result_ring_capacity: h.result_ring_capacity.load(Ordering::Relaxed),
        created_unix_ms: h.created_unix_ms.load(Ordering::Relaxed),
        creator_pid: h.creator_pid.load(Ordering::Relaxed),
    };
    report.header = Some(header);
    for (role, monitor) in Role::ALL.into_iter().zip(monitors.iter_mut()) {
        let liveness = monitor.verdict(window);
        let snapshot = control::snapshot(control, role);
        if snapshot.state.is_none() {
            report.problems.push(format!(
                "{} side: state word {} is not a state shmex writes",
                role.name(),
                snapshot.state_word
            ));
        }
        report.sides.push(SideReport {
            role,
            snapshot,
            lock_held: control::role_lock_held(&segment, role).ok().flatten(),
            liveness,
        });
    }
    match control::validate(&segment, Duration::ZERO) {
        Ok(plan) => report.plan = Some(plan),
        Err(e) => report.problems.push(format!("layout: {e}")),
    }
    if file_len < segment.len() as u64 {
        return report;
    }
    for (ring, offset, capacity) in [
        ("task", header.task_ring_offset, header.task_ring_capacity),
        (
            "result",
            header.result_ring_offset,
            header.result_ring_capacity,
        ),
    ] {
        let Some(ring_header) = control::ring_header(&segment, offset) else {
            report.problems.push(format!(
                "{ring} ring header at offset {offset} lies outside the segment"
            ));
            continue;
        };
        let found = RingReport {
            ring,
            offset,
            magic: ring_header.magic.load(Ordering::Relaxed),
            capacity: ring_header.capacity.load(Ordering::Relaxed),
            data_offset: ring_header.data_offset.load(Ordering::Relaxed),
            head: ring_header.head.value.load(Ordering::Relaxed),
            tail: ring_header.tail.value.load(Ordering::Relaxed),
        };
        if found.magic != RING_MAGIC {
            report.problems.push(format!(
                "{ring} ring: bad magic {:#018x} (expected {RING_MAGIC:#018x})",
                found.magic
            ));
        }
        if found.capacity != capacity {
            report.problems.push(format!(
                "{ring} ring: header capacity {} disagrees with the segment header's {capacity}",
                found.capacity
            ));
        }
        if found.fill().is_none() {
            report.problems.push(format!(
                "{ring} ring: positions inconsistent (head {}, tail {}, capacity {})",
                found.head, found.tail, found.capacity
            ));
        }
        report.rings.push(found);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::SideState;

    fn side(interval_ms: u64) -> SideSnapshot {
        SideSnapshot {
            pid: 1,
            state: Some(SideState::Attached),
            state_word: 1,
            epoch: 1,
            heartbeat: 1,
            heartbeat_interval: Duration::from_millis(interval_ms),
            attached_unix_ms: 0,
        }
    }

    #[test]
    fn the_default_window_follows_the_slowest_heartbeat_within_bounds() {
        assert_eq!(default_window(&[]), Duration::from_millis(100));
        assert_eq!(
            default_window(&[side(10), side(1000)]),
            Duration::from_millis(1500)
        );
        // A scribbled interval cannot stretch the watch.
        assert_eq!(default_window(&[side(u64::MAX / 2)]), MAX_WATCH_WINDOW);
    }

    #[test]
    fn ring_fill_rejects_inconsistent_positions() {
        let ring = RingReport {
            ring: "task",
            offset: 4096,
            magic: RING_MAGIC,
            capacity: 8192,
            data_offset: 8192,
            head: 100,
            tail: 300,
        };
        assert_eq!(ring.fill(), Some(200));
        assert_eq!(RingReport { head: 400, ..ring }.fill(), None);
        assert_eq!(
            RingReport {
                tail: 100_000,
                ..ring
            }
            .fill(),
            None
        );
    }
}
