//! Tests of the `shmex` command: each subcommand against real segments, held by real child
//! processes (`shmex-testpeer`), some of them SIGKILLed. Every test names its segments
//! uniquely and restricts `list`/`clean` to its own prefix, so tests running side by side (or
//! other users' segments) are never touched; every segment made here is removed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use assert_cmd::Command;
use predicates::prelude::*;
use shmex::control;
use shmex::link::{CreateOptions, Link};
use shmex::segment::{self, Segment, SegmentName};

// The multi-process helpers of the library's own tests (its `shmex-testpeer` child).
#[path = "../../tests/common/mod.rs"]
mod common;
use common::Peer;

/// A prefix no other test (and no other test process) uses.
fn unique_prefix() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "shmex.test.cli.{}.{}.",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn name(prefix: &str, tag: &str) -> SegmentName {
    SegmentName::new(format!("{prefix}{tag}")).unwrap()
}

fn shmex() -> Command {
    Command::cargo_bin("shmex").unwrap()
}

/// Starts `shmex-testpeer MODE NAME` and waits for its `READY` line; the child is SIGKILLed
/// and reaped when dropped, and `kill` makes it die without detaching (its locks go, its
/// segment stays).
fn ready(mode: &str, name: &SegmentName) -> Peer {
    let peer = Peer::spawn(&[mode, name.as_str()]);
    peer.expect_line("READY");
    peer
}

/// Removes a segment at the end of a test, whatever happened (only dead ones can go; a test
/// kills its peers first).
struct Cleanup(Vec<SegmentName>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = segment::reclaim(name);
        }
    }
}

/// Runs `shmex clean [--dry-run] --prefix PREFIX`, which must succeed; returns its stdout.
fn clean(prefix: &str, dry_run: bool) -> String {
    let mut command = shmex();
    command.arg("clean");
    if dry_run {
        command.arg("--dry-run");
    }
    let output = command.args(["--prefix", prefix]).assert().success();
    String::from_utf8(output.get_output().stdout.clone()).unwrap()
}

fn exists(name: &SegmentName) -> bool {
    segment::owner_lock_held(name).unwrap().is_some()
}

#[test]
fn list_shows_a_live_and_a_dead_segment_with_their_sides() {
    let prefix = unique_prefix();
    let (live, dead) = (name(&prefix, "live"), name(&prefix, "dead"));
    let _cleanup = Cleanup(vec![live.clone(), dead.clone()]);
    let _holder = ready("hold", &live);
    let _agent = ready("attach-hold", &live);
    ready("hold", &dead).kill();

    let output = shmex()
        .args(["list", "--prefix", &prefix, "--window-ms", "50"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let output = String::from_utf8(output).unwrap();
    let row = |n: &SegmentName| {
        output
            .lines()
            .find(|l| l.starts_with(n.as_str()))
            .unwrap_or_else(|| panic!("no row for {n:?} in\n{output}"))
            .to_string()
    };
    let live_row = row(&live);
    assert!(live_row.contains(" live "), "{live_row}");
    assert!(!live_row.contains("absent"), "agent attached: {live_row}");
    let dead_row = row(&dead);
    assert!(dead_row.contains(" dead "), "{dead_row}");
    assert!(dead_row.contains("dead"), "{dead_row}");
    assert!(output.starts_with("NAME"), "{output}");
}

#[test]
fn list_of_nothing_says_so() {
    shmex()
        .args(["list", "--prefix", &unique_prefix()])
        .assert()
        .success()
        .stdout(predicate::str::contains("no shmex segments"));
}

#[test]
fn inspect_decodes_a_healthy_segment() {
    let prefix = unique_prefix();
    let live = name(&prefix, "ok");
    let _cleanup = Cleanup(vec![live.clone()]);
    let link = Link::create(&live, &CreateOptions::default().ring_capacity(64 * 1024)).unwrap();
    shmex()
        .args(["inspect", live.as_str(), "--window-ms", "20"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("contents  consistent")
                .and(predicate::str::contains("status    live"))
                .and(predicate::str::contains(format!(
                    "by pid {}",
                    std::process::id()
                )))
                .and(predicate::str::contains("capacity 64.0 KiB"))
                .and(predicate::str::contains("0 B in flight")),
        );
    drop(link);
}

#[test]
fn inspect_reports_corruption_instead_of_crashing() {
    let prefix = unique_prefix();
    let target = name(&prefix, "corrupt");
    let _cleanup = Cleanup(vec![target.clone()]);
    let link = Link::create(&target, &CreateOptions::default().ring_capacity(64 * 1024)).unwrap();
    // A third party scribbles over the control block and a ring header.
    let segment = Segment::open(&target, false).unwrap();
    let plan = control::validate(&segment, Duration::from_secs(5)).unwrap();
    let control_block = control::control_block(&segment).unwrap();
    control_block
        .header
        .magic
        .store(0xDEAD_BEEF, Ordering::Relaxed);
    control_block.sides[1].state.store(77, Ordering::Relaxed);
    control::ring_header(&segment, plan.task_ring_offset)
        .unwrap()
        .head
        .value
        .store(1 << 50, Ordering::Relaxed);
    shmex()
        .args(["inspect", target.as_str(), "--window-ms", "20"])
        .assert()
        .code(3)
        .stdout(
            predicate::str::contains("CORRUPT")
                .and(predicate::str::contains("bad magic"))
                .and(predicate::str::contains("state word 77"))
                .and(predicate::str::contains(
                    "task ring: positions inconsistent",
                )),
        )
        .stderr(
            predicate::str::contains("is corrupt").and(predicate::str::contains("\n").count(1)),
        );

    // Offsets pointing outside the segment and a nonsense capacity: still a report.
    control_block
        .header
        .result_ring_offset
        .store(u64::MAX - 7, Ordering::Relaxed);
    control_block
        .header
        .task_ring_capacity
        .store(3, Ordering::Relaxed);
    shmex()
        .args(["inspect", target.as_str(), "--window-ms", "20"])
        .assert()
        .code(3)
        .stdout(
            predicate::str::contains("result ring header at offset")
                .and(predicate::str::contains("lies outside the segment")),
        );
    // `list` marks it and goes on.
    shmex()
        .args(["list", "--prefix", &prefix, "--window-ms", "20"])
        .assert()
        .success()
        .stdout(predicate::str::contains("live!"));
    drop(link);
}

#[test]
fn clean_removes_only_segments_whose_sides_are_all_dead() {
    let prefix = unique_prefix();
    let live = name(&prefix, "live");
    let dead = name(&prefix, "dead");
    let orphan_agent = name(&prefix, "agent-only");
    let _cleanup = Cleanup(vec![live.clone(), dead.clone(), orphan_agent.clone()]);
    let _holder = ready("hold", &live);
    ready("hold", &dead).kill();
    // The exchanger died but its agent lives on: not ours to remove.
    let mut owner = ready("hold", &orphan_agent);
    let mut agent = ready("attach-hold", &orphan_agent);
    owner.kill();

    let dry = clean(&prefix, true);
    for line in [
        format!("would remove {}", dead.as_str()),
        format!("keep {} (live)", live.as_str()),
        format!("keep {} (live)", orphan_agent.as_str()),
    ] {
        assert!(dry.lines().any(|l| l == line), "no {line:?} in\n{dry}");
    }
    assert!(exists(&dead), "--dry-run removed nothing");

    let cleaned = clean(&prefix, false);
    assert!(
        cleaned.contains(&format!("removed {}", dead.as_str())),
        "{cleaned}"
    );
    assert!(cleaned.contains("removed 1, kept 2"), "{cleaned}");
    assert!(!exists(&dead));
    assert!(exists(&live));
    assert!(exists(&orphan_agent));

    // Once the agent is gone too, the orphan goes.
    agent.kill();
    let cleaned = clean(&prefix, false);
    assert!(
        cleaned.contains(&format!("removed {}", orphan_agent.as_str())),
        "{cleaned}"
    );
    assert!(!exists(&orphan_agent));
    assert!(exists(&live));
}

#[test]
fn bad_arguments_give_one_clear_line_and_a_failure_status() {
    shmex()
        .args(["inspect", "not-a-segment"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("must start with \"shmex.\""));
    shmex()
        .args(["inspect", &format!("{}missing", unique_prefix())])
        .assert()
        .code(1)
        .stderr(
            predicate::str::starts_with("shmex: error: no segment named")
                .and(predicate::str::contains("\n").count(1)),
        );
    shmex()
        .args(["list", "--window-ms", "soon"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid value 'soon'"));
    shmex().arg("frobnicate").assert().code(2);
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["demo", "bench", "list", "inspect", "clean"] {
        shmex()
            .args([sub, "--help"])
            .assert()
            .success()
            .stdout(predicate::str::contains("Usage: shmex"));
    }
}

#[test]
fn bench_json_has_every_transport_and_size_asked_for() {
    let output = shmex()
        .args([
            "bench",
            "--sizes",
            "4KiB,64KiB",
            "--reps",
            "1",
            "--min-time-ms",
            "1",
            "--json",
        ])
        .timeout(Duration::from_secs(300))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let report: serde_json::Value = serde_json::from_slice(&output).expect("--json is JSON");
    let transports = ["memcpy", "shmex-copy", "shmex-loan", "uds", "tcp", "pipe"];
    assert_eq!(report["transports"], serde_json::json!(transports));
    assert_eq!(report["sizes"], serde_json::json!([4096, 65536]));
    let results = report["results"].as_array().unwrap();
    for transport in transports {
        for size in [4096u64, 65536] {
            let entry = results
                .iter()
                .find(|r| r["transport"] == transport && r["size_bytes"] == size)
                .unwrap_or_else(|| panic!("no result for {transport} {size}"));
            assert!(entry["gbps"].as_f64().unwrap() > 0.0, "{entry}");
            assert!(entry["samples"].as_u64().unwrap() >= 1, "{entry}");
            assert!(entry["ratio_to_memcpy"].as_f64().is_some(), "{entry}");
            assert!(entry["ratio_to_uds"].as_f64().is_some(), "{entry}");
        }
    }
}

#[test]
fn bench_table_and_plot_for_a_subset() {
    let dir = std::env::temp_dir().join(format!("shmex-cli-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("throughput.svg");
    shmex()
        .args([
            "bench",
            "--sizes",
            "4KiB",
            "--transports",
            "memcpy,uds,shmex-copy",
            "--reps",
            "1",
            "--min-time-ms",
            "1",
            "--plot",
        ])
        .arg(&svg)
        .timeout(Duration::from_secs(300))
        .assert()
        .success()
        .stdout(
            predicate::str::contains("ratio to memcpy")
                .and(predicate::str::contains("ratio to uds"))
                .and(predicate::str::contains("shmex-copy"))
                .and(predicate::str::contains("tcp").not()),
        );
    let picture = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(picture.starts_with("<svg"), "not an SVG");
    for label in ["memcpy", "uds", "shmex-copy", "4KiB"] {
        assert!(picture.contains(label), "the plot has no {label}");
    }
}

#[test]
fn bench_refuses_sizes_this_host_cannot_hold_before_starting_anything() {
    shmex()
        .args(["bench", "--sizes", "1024GiB"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::starts_with("shmex: error: these sizes need")
                .and(predicate::str::contains("\n").count(1)),
        );
}

#[test]
fn bench_rejects_unknown_transports_and_sizes() {
    shmex()
        .args(["bench", "--transports", "carrier-pigeon"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid value 'carrier-pigeon'"));
    shmex()
        .args(["bench", "--sizes", "12parsecs"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown size unit"));
}

#[test]
fn demo_exchanges_a_small_model_and_verifies_every_round() {
    shmex()
        .args([
            "demo",
            "--size",
            "4MiB",
            "--tensors",
            "12",
            "--rounds",
            "2",
            "--ring",
            "1MiB",
        ])
        .timeout(Duration::from_secs(300))
        .assert()
        .success()
        .stdout(
            predicate::str::contains("model of 12 tensors, 4MiB")
                .and(predicate::str::contains(
                    "round 1: task + result (12 tensors each way)",
                ))
                .and(predicate::str::contains("round 2: task + result"))
                .and(predicate::str::contains("data verified").count(2))
                .and(predicate::str::contains("agent exited cleanly")),
        );
}

#[test]
fn demo_refuses_a_model_too_small_for_its_tensors() {
    shmex()
        .args(["demo", "--size", "1KiB", "--tensors", "1000"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "cannot give each of 1000 tensors one f32",
        ));
    shmex()
        .args(["demo", "--rounds", "0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--rounds"));
}

#[test]
fn a_junk_file_with_our_prefix_is_reported_and_cleaned() {
    let prefix = unique_prefix();
    let junk = name(&prefix, "junk");
    let _cleanup = Cleanup(vec![junk.clone()]);
    std::fs::write(format!("/dev/shm/{}", junk.as_str()), b"not a segment").unwrap();
    shmex()
        .args(["inspect", junk.as_str(), "--window-ms", "1"])
        .assert()
        .code(3)
        .stdout(predicate::str::contains("cannot hold a shmex layout"));
    let dry = clean(&prefix, true);
    assert!(
        dry.contains(&format!("would remove {}", junk.as_str())),
        "{dry}"
    );
    let cleaned = clean(&prefix, false);
    assert!(
        cleaned.contains(&format!("removed {}", junk.as_str())),
        "{cleaned}"
    );
    assert!(!exists(&junk));
}
