//! Peer process for shmex's multi-process tests and benchmarks (not a user tool).
//!
//! `shmex-testpeer MODE NAME [ARGS...]`; each mode prints `READY` (and other progress lines)
//! on stdout so the parent can sequence its steps, and exits non-zero with one line on stderr
//! on failure. Modes:
//! - `hold NAME`: create the link as exchanger and wait until stdin closes.
//! - `attach-hold NAME`: attach as agent and wait until stdin closes.
//! - `stream-send NAME LEN SEED`: attach as agent, send LEN pseudo-random bytes as one stream
//!   on the result ring, print the checksum.
//! - `stream-recv NAME`: attach as agent, receive one stream from the task ring, print its
//!   length and checksum.
//! - `write-then-hang NAME COUNT`: attach as agent, push COUNT whole records `i` repeated,
//!   then reserve one more, fill half of it, print `MID` and hang (the parent SIGKILLs us).
//! - `scribble NAME WHAT`: open the segment without attaching and overwrite a word of the task
//!   ring header (`tail`, `head`) or the first record header (`record`: its check word, with the
//!   tail moved past it so it reads as published) with garbage.
//! - `model-echo NAME`: attach as agent, receive one DXO task, answer with a WEIGHT_DIFF result
//!   of the same tensors, print `MODEL <tensor count> <checksum>`.
//! - `echo NAME COUNT`: attach as agent; COUNT times, pop a record from the task ring and push
//!   it back on the result ring (ping-pong peer).
//!
//! Task-protocol modes (`shmex::protocol`, short timeouts: heartbeat 20 ms, poll 5 ms):
//! - `agent-serve NAME [SEED]`: attach an `Agent`; for each task print `TASK <id> <checksum>`,
//!   answer with its tensors as a WEIGHT_DIFF result (meta `task` = id), print
//!   `SUBMIT <id> <accepted>`; with a non-zero SEED, sometimes sleep a little first and
//!   sometimes submit twice (printing `DUP <id> <accepted>`). Prints `CLOSED` and exits when
//!   the exchanger says `bye`.
//! - `agent-hold-task NAME`: attach an `Agent`, fetch one task, print `TASK <id>`, then hang.
//! - `raw-agent-stall NAME`: attach a raw link as agent and never read from it.
//! - `raw-result-then-hang NAME`: attach a raw link as agent, receive one task, ack it, send
//!   its result, print `SENT`, then hang.
//! - `raw-partial-result-then-hang NAME`: attach a raw link as agent, receive one task, ack
//!   it, send only the first fragment of a 4 MiB result (then give the message up), print
//!   `SENT`, then hang.
//! - `exchanger-task NAME`: create an `Exchanger`, print `READY`, execute task `t1`, print
//!   `REPLY <rc>`, then wait until stdin closes.

#![cfg_attr(loom, allow(unused))]

#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
mod peer {
    use std::io::Read;
    use std::process::ExitCode;
    use std::time::{Duration, Instant};

    use shmex::control;
    use shmex::frame::{DataKind, Envelope, FrameReceiver, FrameSender, MessageKind};
    use shmex::link::{AttachOptions, CreateOptions, Link};
    use shmex::segment::{Segment, SegmentName};
    use shmex::stream;
    use shmex_test_support::pattern::{checksum, checksum_all, fill};
    use std::sync::atomic::Ordering;

    fn deadline() -> Option<Instant> {
        Some(Instant::now() + Duration::from_secs(120))
    }

    fn wait_for_stdin_close() {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    }

    fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
        let mode = args.first().ok_or("missing MODE")?.as_str();
        let name = SegmentName::new(args.get(1).ok_or("missing NAME")?.as_str())?;
        let arg = |i: usize| -> Result<u64, Box<dyn std::error::Error>> {
            Ok(args.get(i).ok_or("missing argument")?.parse::<u64>()?)
        };
        match mode {
            "hold" => {
                let _link =
                    Link::create(&name, &CreateOptions::default().ring_capacity(64 * 1024))?;
                println!("READY");
                wait_for_stdin_close();
            }
            "attach-hold" => {
                let _link = Link::attach(&name, &AttachOptions::default())?;
                println!("READY");
                wait_for_stdin_close();
            }
            "stream-send" => {
                let len = usize::try_from(arg(2)?)?;
                let mut data = vec![0u8; len];
                fill(&mut data, arg(3)?);
                let mut link = Link::attach(&name, &AttachOptions::default())?;
                println!("READY");
                let chunk = stream::default_chunk(link.sender().capacity());
                stream::send_stream(link.sender(), &data, chunk, deadline())?;
                println!("SENT {len} {:016x}", checksum(&data));
            }
            "stream-recv" => {
                let mut link = Link::attach(&name, &AttachOptions::default())?;
                println!("READY");
                let mut out = Vec::new();
                stream::recv_stream_into(link.receiver(), &mut out, u64::MAX, deadline())?;
                println!("RECEIVED {} {:016x}", out.len(), checksum(&out));
            }
            "write-then-hang" => {
                let count = arg(2)?;
                let mut link = Link::attach(&name, &AttachOptions::default())?;
                println!("READY");
                for i in 0..count {
                    let record = vec![i as u8; 100 + i as usize];
                    link.sender().push(&record, deadline())?;
                }
                let mut grant = link.sender().reserve(4096, deadline())?;
                let half = grant.len() / 2;
                grant.as_mut_slice()[..half].fill(0xEE);
                println!("MID");
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            "scribble" => {
                let what = args.get(2).ok_or("missing WHAT")?.as_str();
                let segment = Segment::open(&name, false)?;
                let plan = control::validate(&segment, Duration::from_secs(5))?;
                let header = control::ring_header(&segment, plan.task_ring_offset)
                    .ok_or("ring header outside the segment")?;
                match what {
                    "tail" => header.tail.value.store(u64::MAX - 5, Ordering::Release),
                    "head" => header.head.value.store(1 << 50, Ordering::Release),
                    "record" => {
                        // First record header sits at data offset 0; zeroing its check word
                        // makes it invalid whatever it held.
                        let data = header.data_offset.load(Ordering::Relaxed) as usize;
                        let check = segment.as_ptr().wrapping_add(data + 8)
                            as *const std::sync::atomic::AtomicU64;
                        // SAFETY: `data + 16 <= segment.len()` because `validate` checked the
                        // plan against the mapping; the word is 8-aligned (page-aligned region).
                        unsafe { (*check).store(0xDEAD_BEEF, Ordering::Release) };
                        // Make sure the bogus record is inside [head, tail), i.e. "published".
                        header.tail.value.fetch_max(128, Ordering::Release);
                    }
                    other => return Err(format!("unknown scribble target {other}").into()),
                }
                println!("DONE");
            }
            "model-echo" => {
                // Receive one DXO task, answer with a result carrying the same tensors (viewed in
                // place, not copied first), print the task's checksum.
                let mut link = Link::attach(&name, &AttachOptions::default())?;
                println!("READY");
                let mut receiver = FrameReceiver::default();
                let (tx, rx) = link.split();
                let task = receiver.recv(rx, deadline())?;
                let result = task.tensors_dxo(DataKind::WeightDiff)?;
                let sum = checksum_all(task.tensors().map(|t| t.bytes()));
                let reply =
                    Envelope::new(MessageKind::Result).with_task(task.task_id(), task.task_name());
                FrameSender::new().send(tx, &reply, Some(&result), deadline())?;
                println!("MODEL {} {sum:016x}", task.tensor_count());
            }
            "echo" => {
                let count = arg(2)?;
                let mut link = Link::attach(&name, &AttachOptions::default())?;
                println!("READY");
                let mut buf = Vec::new();
                for _ in 0..count {
                    let (tx, rx) = link.split();
                    rx.pop_into(&mut buf, deadline())?;
                    tx.push(&buf, deadline())?;
                }
            }
            protocol if protocol::MODES.contains(&protocol) => {
                protocol::run(protocol, &name, args.get(2))?
            }
            other => return Err(format!("unknown mode {other}").into()),
        }
        Ok(())
    }

    /// The task-protocol modes.
    mod protocol {
        use super::{deadline, wait_for_stdin_close};
        use shmex::frame::{
            DType, DataKind, Dxo, Envelope, FrameReceiver, FrameSender, LoanSpec, MessageKind,
            OwnedMessage, ReturnCode,
        };
        use shmex::link::{AttachOptions, Link};
        use shmex::protocol::{
            AbortSignal, Agent, AgentConfig, Exchanger, ExchangerConfig, GetTaskError, Headers,
            SubmitError,
        };
        use shmex::segment::SegmentName;
        use shmex::signal::WaitStrategy;
        use shmex_test_support::pattern::checksum_all;
        use std::time::Duration;

        type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

        pub const MODES: &[&str] = &[
            "agent-serve",
            "agent-hold-task",
            "agent-hold-task-in-place",
            "agent-loan-half-then-hang",
            "raw-agent-stall",
            "raw-result-then-hang",
            "raw-partial-result-then-hang",
            "exchanger-task",
        ];

        fn wait() -> WaitStrategy {
            WaitStrategy::default()
                .spin(Duration::from_micros(20))
                .poll_interval(Duration::from_millis(5))
        }

        fn agent(name: &SegmentName) -> Result<Agent> {
            agent_with(name, AgentConfig::default())
        }

        fn agent_with(name: &SegmentName, config: AgentConfig) -> Result<Agent> {
            let config = config
                .attach_timeout(Duration::from_secs(60))
                .heartbeat_interval(Duration::from_millis(20))
                .wait(wait());
            Ok(Agent::attach(name, config)?)
        }

        fn raw_agent(name: &SegmentName) -> Result<Link> {
            let options = AttachOptions::default().heartbeat_interval(Duration::from_millis(20));
            Ok(Link::attach(name, &options)?)
        }

        fn tensors_checksum(message: &OwnedMessage) -> u64 {
            checksum_all(message.tensors().map(|t| t.bytes()))
        }

        fn echo_dxo<'m>(message: &'m OwnedMessage, id: &str) -> Result<Dxo<'m>> {
            Ok(message
                .tensors_dxo(DataKind::WeightDiff)?
                .with_meta("task", id))
        }

        /// xorshift64: reproducible choices without a dependency.
        fn next(state: &mut u64) -> u64 {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *state
        }

        pub fn run(mode: &str, name: &SegmentName, arg: Option<&String>) -> Result<()> {
            match mode {
                "agent-serve" => {
                    let mut random = arg.map(|a| a.parse::<u64>()).transpose()?.unwrap_or(0);
                    let agent = agent(name)?;
                    println!("READY");
                    loop {
                        let task = match agent.get_task(Some(Duration::from_secs(1))) {
                            Ok(Some(task)) => task,
                            Ok(None) => continue,
                            Err(GetTaskError::Closed) => break,
                            Err(e) => return Err(e.into()),
                        };
                        println!("TASK {} {:016x}", task.id, tensors_checksum(&task.message));
                        let result = echo_dxo(&task.message, &task.id)?;
                        if random != 0 && next(&mut random).is_multiple_of(8) {
                            std::thread::sleep(Duration::from_micros(next(&mut random) % 2000));
                        }
                        let accepted = match agent.submit_result(&result, ReturnCode::Ok) {
                            Err(SubmitError::Closed) => break,
                            other => other?,
                        };
                        println!("SUBMIT {} {accepted}", task.id);
                        if random != 0 && next(&mut random).is_multiple_of(4) {
                            let again = match agent.submit_result(&result, ReturnCode::Ok) {
                                Err(SubmitError::Closed) => break,
                                other => other?,
                            };
                            println!("DUP {} {again}", task.id);
                        }
                    }
                    println!("CLOSED");
                }
                "agent-hold-task" => {
                    let agent = agent(name)?;
                    println!("READY");
                    let task = agent.get_task(None)?.ok_or("no task")?;
                    println!("TASK {}", task.id);
                    wait_for_stdin_close();
                }
                "agent-hold-task-in-place" => {
                    // Holds its task in the task ring (receive_in_place) until killed.
                    let agent = agent_with(name, AgentConfig::default().receive_in_place(true))?;
                    println!("READY");
                    let task = agent.get_task(None)?.ok_or("no task")?;
                    println!("TASK {} in_ring={}", task.id, task.message.is_in_ring());
                    wait_for_stdin_close();
                }
                "agent-loan-half-then-hang" => {
                    // Takes a result loan for its task, fills half of it, and hangs until
                    // killed: nothing of the loan may ever reach the exchanger.
                    let agent = agent(name)?;
                    println!("READY");
                    let task = agent.get_task(None)?.ok_or("no task")?;
                    println!("TASK {}", task.id);
                    let len = task
                        .message
                        .tensor_by_name("w")
                        .ok_or("no w")?
                        .to_vec::<f32>()?
                        .len();
                    let spec = LoanSpec::new(DataKind::WeightDiff)
                        .tensor("w", DType::F32, &[len as u64])
                        .meta("task", task.id.as_str());
                    let mut loan = agent.loan_result(&spec)?;
                    let w = loan.tensor_mut::<f32>(0)?;
                    w[..len / 2].fill(9.0);
                    println!("HALF");
                    wait_for_stdin_close();
                    drop(loan);
                }
                "raw-agent-stall" => {
                    let _link = raw_agent(name)?;
                    println!("READY");
                    wait_for_stdin_close();
                }
                "raw-result-then-hang" => {
                    let mut link = raw_agent(name)?;
                    let epoch = link.epoch();
                    println!("READY");
                    let mut receiver = FrameReceiver::default();
                    receiver.set_min_epoch(epoch);
                    let (tx, rx) = link.split();
                    let task = receiver.recv(rx, deadline())?.into_owned()?;
                    let mut sender = FrameSender::new();
                    let ack = Envelope::new(MessageKind::TaskAck)
                        .with_task(task.task_id(), "")
                        .with_epoch(epoch)
                        .with_reply_to(task.sequence());
                    sender.send(tx, &ack, None, deadline())?;
                    let result = echo_dxo(&task, task.task_id())?;
                    let envelope = Envelope::new(MessageKind::Result)
                        .with_task(task.task_id(), task.task_name())
                        .with_epoch(epoch);
                    sender.send(tx, &envelope, Some(&result), deadline())?;
                    println!("SENT");
                    wait_for_stdin_close();
                }
                "raw-partial-result-then-hang" => {
                    let mut link = raw_agent(name)?;
                    let epoch = link.epoch();
                    println!("READY");
                    let mut receiver = FrameReceiver::default();
                    receiver.set_min_epoch(epoch);
                    let (tx, rx) = link.split();
                    let task = receiver.recv(rx, deadline())?.into_owned()?;
                    let mut sender = FrameSender::new();
                    let ack = Envelope::new(MessageKind::TaskAck)
                        .with_task(task.task_id(), "")
                        .with_epoch(epoch)
                        .with_reply_to(task.sequence());
                    sender.send(tx, &ack, None, deadline())?;
                    let big = vec![0.25f32; 1 << 20];
                    let result = Dxo::new(DataKind::WeightDiff)
                        .with_tensor("w", &[big.len() as u64], &big)?
                        .with_meta("task", task.task_id());
                    let envelope = Envelope::new(MessageKind::Result)
                        .with_task(task.task_id(), task.task_name())
                        .with_epoch(epoch);
                    // Asked before each fragment: the first goes out, the rest never does.
                    let asked = std::cell::Cell::new(0u32);
                    let give_up = || {
                        asked.set(asked.get() + 1);
                        asked.get() > 1
                    };
                    let sent = sender.send_cancellable(
                        tx,
                        &envelope,
                        Some(&result),
                        deadline(),
                        Some((&give_up, Duration::from_millis(5))),
                    );
                    if !matches!(sent, Err(shmex::frame::SendError::Cancelled)) {
                        return Err(format!("expected a cancelled send, got {sent:?}").into());
                    }
                    println!("SENT");
                    wait_for_stdin_close();
                }
                "exchanger-task" => {
                    let config = ExchangerConfig::default()
                        .agent_heartbeat_interval(Duration::from_millis(20))
                        .wait(wait())
                        .task_ring_capacity(1 << 20)
                        .result_ring_capacity(1 << 20);
                    let exchanger = Exchanger::create(name, config)?;
                    println!("READY");
                    let weights = [1.0f32, 2.0, 3.0, 4.0];
                    let dxo = Dxo::new(DataKind::Weights).with_tensor("w", &[4], &weights)?;
                    let reply =
                        exchanger.execute("train", &dxo, &Headers::new("t1"), &AbortSignal::new());
                    println!("REPLY {}", reply.rc.as_str());
                    wait_for_stdin_close();
                }
                other => return Err(format!("unknown protocol mode {other}").into()),
            }
            Ok(())
        }
    }

    pub fn main() -> ExitCode {
        let args: Vec<String> = std::env::args().skip(1).collect();
        match run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shmex-testpeer: {e}");
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(not(loom))]
fn main() -> std::process::ExitCode {
    peer::main()
}
