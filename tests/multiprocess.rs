//! Multi-process tests: a real second process (the `shmex-testpeer` binary) on the other end
//! of a named segment. Every wait has a watchdog; children are SIGKILLed when dropped.
#![cfg(not(loom))]

mod common;

use std::time::{Duration, Instant};

use common::{Peer, WATCHDOG};

use shmex::control::Liveness;
use shmex::link::{CreateOptions, Link};
use shmex::ring::{RecvError, ReserveError};
use shmex::segment::{self, CreateError, SegmentName};
use shmex::signal::PeerLost;
use shmex::stream;
use shmex_test_support::pattern::{checksum, checksum_all, fill};

fn deadline() -> Option<Instant> {
    Some(Instant::now() + WATCHDOG)
}

fn unique(tag: &str) -> SegmentName {
    common::unique_name("mp", tag)
}

#[test]
fn one_gib_through_a_small_ring_arrives_intact() {
    let name = unique("gib");
    let len: usize = 1 << 30;
    let mut link = Link::create(&name, &CreateOptions::default().ring_capacity(4 << 20)).unwrap();
    let peer = Peer::spawn(&["stream-recv", name.as_str()]);
    peer.expect_line("READY");
    let mut data = vec![0u8; len];
    fill(&mut data, 42);
    let chunk = stream::default_chunk(link.sender().capacity());
    stream::send_stream(link.sender(), &data, chunk, deadline()).unwrap();
    let line = peer.expect_line("RECEIVED");
    assert_eq!(line, format!("RECEIVED {len} {:016x}", checksum(&data)));
    peer.finish();
}

#[test]
fn stream_from_agent_to_exchanger_arrives_intact() {
    let name = unique("up");
    let len: usize = (48 << 20) + 12345;
    let mut link = Link::create(&name, &CreateOptions::default().ring_capacity(1 << 20)).unwrap();
    let peer = Peer::spawn(&["stream-send", name.as_str(), &len.to_string(), "9"]);
    let mut out = Vec::new();
    stream::recv_stream_into(link.receiver(), &mut out, len as u64, deadline()).unwrap();
    let sent = peer.expect_line("SENT");
    assert_eq!(sent, format!("SENT {len} {:016x}", checksum(&out)));
    assert_eq!(out.len(), len);
    peer.finish();
}

#[test]
fn killed_writer_leaves_only_whole_records_then_reads_as_dead() {
    let name = unique("kill");
    let mut link = Link::create(&name, &CreateOptions::default().ring_capacity(1 << 20)).unwrap();
    let mut peer = Peer::spawn(&["write-then-hang", name.as_str(), "5"]);
    peer.expect_line("MID");
    let killed_at = Instant::now();
    peer.kill();
    let mut buf = Vec::new();
    for i in 0..5u8 {
        link.receiver().pop_into(&mut buf, deadline()).unwrap();
        assert_eq!(buf, vec![i; 100 + i as usize], "record {i}");
    }
    let err = link.receiver().pop_into(&mut buf, deadline()).unwrap_err();
    let detected_after = killed_at.elapsed();
    assert!(
        matches!(err, RecvError::PeerLost(PeerLost::Dead { .. })),
        "expected a dead peer, got {err:?}"
    );
    assert!(matches!(
        link.peer_liveness(Duration::from_secs(60)),
        Liveness::Dead { .. }
    ));
    // Reported, not asserted: speed lives in the comparison runner.
    eprintln!("dead writer detected {detected_after:?} after SIGKILL");
}

#[test]
fn killed_reader_makes_a_blocked_writer_report_dead() {
    let name = unique("killreader");
    let mut link = Link::create(&name, &CreateOptions::default().ring_capacity(64 * 1024)).unwrap();
    let mut peer = Peer::spawn(&["attach-hold", name.as_str()]);
    peer.expect_line("READY");
    peer.kill();
    // Fill the ring: with no reader, the writer must block and then see the reader dead.
    let record = vec![1u8; 1000];
    let err = loop {
        match link.sender().push(&record, deadline()) {
            Ok(()) => continue,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, ReserveError::PeerLost(PeerLost::Dead { .. })),
        "expected a dead peer, got {err:?}"
    );
}

#[test]
fn scribbled_ring_header_gives_typed_errors_not_panics() {
    for what in ["tail", "head", "record"] {
        let name = unique(&format!("scribble-{what}"));
        let mut exchanger =
            Link::create(&name, &CreateOptions::default().ring_capacity(64 * 1024)).unwrap();
        let agent_peer = Peer::spawn(&["attach-hold", name.as_str()]);
        agent_peer.expect_line("READY");
        if what == "record" {
            exchanger.sender().push(&[5u8; 64], deadline()).unwrap();
        }
        let scribbler = Peer::spawn(&["scribble", name.as_str(), what]);
        scribbler.expect_line("DONE");
        scribbler.finish();
        // The exchanger produces into the scribbled task ring. It reloads the consumer's head
        // only when its cached copy says the ring is full, so fill the ring: a scribbled head
        // must then surface as corruption; after a scribbled tail or record (which only the
        // consumer reads, see the next test) the producer must just see a full ring.
        let records = 64 * 1024 / 128 + 2;
        let first_error = (0..records).find_map(|_| exchanger.sender().try_push(&[1u8; 64]).err());
        match what {
            "head" => assert!(
                matches!(first_error, Some(shmex::ring::TryReserveError::Corrupt(_))),
                "head scribble: {first_error:?}"
            ),
            _ => assert!(
                matches!(first_error, Some(shmex::ring::TryReserveError::Full)),
                "{what}: {first_error:?}"
            ),
        }
        agent_peer.finish();
    }
}

#[test]
fn scribbled_task_ring_is_a_typed_error_for_the_consumer() {
    // Here this process is the consumer (agent side, attached to a segment the peer owns).
    for what in ["tail", "record"] {
        let name = unique(&format!("scribble-consumer-{what}"));
        let owner = Peer::spawn(&["hold", name.as_str()]);
        owner.expect_line("READY");
        let mut agent = Link::attach(&name, &Default::default()).unwrap();
        let scribbler = Peer::spawn(&["scribble", name.as_str(), what]);
        scribbler.expect_line("DONE");
        scribbler.finish();
        let mut buf = Vec::new();
        let result = agent.receiver().try_pop_into(&mut buf);
        assert!(
            result.is_err(),
            "{what}: expected corruption, got {result:?}"
        );
        let blocking = agent
            .receiver()
            .pop_into(&mut buf, Some(Instant::now() + Duration::from_millis(50)));
        assert!(
            matches!(blocking, Err(RecvError::Corrupt(_))),
            "{what}: {blocking:?}"
        );
        drop(agent);
        owner.finish();
    }
}

#[test]
fn two_segments_side_by_side_do_not_mix() {
    let names = [unique("pair-a"), unique("pair-b")];
    let lens = [(3 << 20) + 1, (5 << 20) + 7];
    let mut links: Vec<Link> = names
        .iter()
        .map(|n| Link::create(n, &CreateOptions::default().ring_capacity(256 * 1024)).unwrap())
        .collect();
    let peers: Vec<Peer> = names
        .iter()
        .zip(lens)
        .enumerate()
        .map(|(i, (n, len))| {
            Peer::spawn(&[
                "stream-send",
                n.as_str(),
                &len.to_string(),
                &(i + 100).to_string(),
            ])
        })
        .collect();
    for (i, link) in links.iter_mut().enumerate() {
        let mut out = Vec::new();
        stream::recv_stream_into(link.receiver(), &mut out, 1 << 30, deadline()).unwrap();
        let mut expected = vec![0u8; lens[i]];
        fill(&mut expected, i as u64 + 100);
        assert_eq!(out.len(), lens[i]);
        assert_eq!(checksum(&out), checksum(&expected), "segment {i}");
    }
    for peer in peers {
        peer.finish();
    }
}

#[test]
fn live_owner_is_refused_and_dead_owners_segment_reclaimed() {
    let name = unique("owner");
    let mut owner = Peer::spawn(&["hold", name.as_str()]);
    owner.expect_line("READY");
    assert!(matches!(
        Link::create(&name, &CreateOptions::default()),
        Err(shmex::link::LinkCreateError::Segment(
            CreateError::InUse { .. }
        ))
    ));
    assert_eq!(segment::owner_lock_held(&name).unwrap(), Some(true));
    owner.kill();
    assert_eq!(segment::owner_lock_held(&name).unwrap(), Some(false));
    let link = Link::create(&name, &CreateOptions::default().ring_capacity(64 * 1024)).unwrap();
    assert_eq!(link.epoch(), 1);
    drop(link);
    assert_eq!(segment::owner_lock_held(&name).unwrap(), None);
}

#[test]
fn echo_peer_round_trips_records() {
    let name = unique("echo");
    let mut link = Link::create(&name, &CreateOptions::default().ring_capacity(64 * 1024)).unwrap();
    let peer = Peer::spawn(&["echo", name.as_str(), "1000"]);
    peer.expect_line("READY");
    let mut buf = Vec::new();
    for i in 0..1000u32 {
        let msg = i.to_le_bytes();
        link.sender().push(&msg, deadline()).unwrap();
        link.receiver().pop_into(&mut buf, deadline()).unwrap();
        assert_eq!(buf, msg);
    }
    peer.finish();
}

#[test]
fn a_dead_peer_with_a_scribbled_state_word_is_still_reported_dead() {
    let name = unique("badstate");
    let mut link = Link::create(&name, &CreateOptions::default().ring_capacity(64 * 1024)).unwrap();
    let mut peer = Peer::spawn(&["attach-hold", name.as_str()]);
    peer.expect_line("READY");
    // The agent's state word becomes a value no shmex process writes, then the agent dies.
    let segment = shmex::segment::Segment::open(&name, false).unwrap();
    let control = shmex::control::control_block(&segment).unwrap();
    control.sides[shmex::layout::Role::Agent.index()]
        .state
        .store(7, std::sync::atomic::Ordering::Release);
    peer.kill();
    let mut buf = Vec::new();
    let err = link.receiver().pop_into(&mut buf, deadline()).unwrap_err();
    assert!(
        matches!(err, RecvError::PeerLost(PeerLost::Dead { .. })),
        "expected a dead peer, got {err:?}"
    );
}

#[test]
fn a_one_gib_model_of_a_hundred_tensors_goes_there_and_back_through_a_16_mib_ring() {
    use shmex::frame::{DataKind, Dxo, Envelope, FrameReceiver, FrameSender, MessageKind};
    let name = unique("model");
    let mut link = Link::create(&name, &CreateOptions::default().ring_capacity(16 << 20)).unwrap();
    let peer = Peer::spawn(&["model-echo", name.as_str()]);
    peer.expect_line("READY");
    // 100 tensors of varied sizes adding up to 1 GiB.
    let total: usize = 1 << 30;
    let sizes: Vec<usize> = (0..100)
        .map(|i| {
            if i < 99 {
                (total / 100 + (i % 7) * 4096) & !3
            } else {
                0
            }
        })
        .collect();
    let last = total - sizes[..99].iter().sum::<usize>();
    let mut buffers: Vec<Vec<u8>> = sizes[..99]
        .iter()
        .chain([&last])
        .map(|&n| vec![0u8; n])
        .collect();
    for (i, b) in buffers.iter_mut().enumerate() {
        fill(b, i as u64 + 1000);
    }
    let mut dxo = Dxo::new(DataKind::Weights).with_meta("current_round", 1);
    for (i, b) in buffers.iter().enumerate() {
        dxo = dxo
            .with_tensor_bytes(
                format!("layer{i}"),
                shmex::frame::DType::F32,
                &[b.len() as u64 / 4],
                b,
            )
            .unwrap();
    }
    let expected = checksum_all(buffers.iter().map(|b| b.as_slice()));
    let (tx, rx) = link.split();
    FrameSender::new()
        .send(
            tx,
            &Envelope::new(MessageKind::Task).with_task("t-1", "train"),
            Some(&dxo),
            deadline(),
        )
        .unwrap();
    let mut receiver = FrameReceiver::default();
    let result = receiver.recv(rx, deadline()).unwrap();
    assert_eq!(
        peer.expect_line("MODEL"),
        format!("MODEL 100 {expected:016x}")
    );
    assert_eq!(result.task_id(), "t-1");
    assert_eq!(result.data_kind(), Some(DataKind::WeightDiff));
    assert_eq!(result.tensor_count(), 100);
    let back = checksum_all(result.tensors().map(|t| t.bytes()));
    assert_eq!(back, expected);
    drop(result);
    peer.finish();
}
