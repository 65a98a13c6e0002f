//! The control block: the init handshake, validation of a segment someone else made, each
//! side's attach (pid, state, restart epoch, heartbeat beater) and liveness verdicts on the
//! peer.
//!
//! Handshake: the creator writes every header field and ring header, then stores
//! [`LAYOUT_VERSION`] with Release; an opener polls that word with Acquire (bounded by a
//! timeout) and only then reads the rest, checking magic, version and sizes in that order.
//!
//! Liveness has two sources. The heartbeat counter, advanced by a background thread at the
//! side's configured interval, tells whether a side is *responsive*. The OFD lock each side
//! holds on its own byte of the segment tells whether its process is *alive*: the kernel drops
//! it when the process dies, whatever the cause, so a SIGKILLed peer is reported dead at the
//! next probe, also when its last heartbeat is recent.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::layout::{
    shared_ref, ControlBlock, RingHeader, Role, SegmentPlan, SideBlock, SideState, CONTROL_LEN,
    LAYOUT_VERSION, MAGIC,
};
use crate::ring::{self, CapacityError};
use crate::segment::Segment;
use crate::signal::{PeerCheck, PeerLost};
use crate::sync::Ordering;
use crate::sys::{self, LockAttempt, SysError};

/// Why a segment's contents are not a usable shmex layout.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The segment is too small to hold a control block.
    #[error("segment is {len} bytes, smaller than a control block ({CONTROL_LEN} bytes)")]
    TooSmall {
        /// The segment's length.
        len: usize,
    },
    /// The creator did not publish a layout version within the timeout.
    #[error("segment not initialised after waiting {waited:?} (layout version word still 0)")]
    NotInitialized {
        /// How long we waited.
        waited: Duration,
    },
    /// The magic number is wrong: this is not a shmex segment.
    #[error("bad magic: expected {expected:#018x}, segment has {found:#018x}")]
    BadMagic {
        /// [`MAGIC`].
        expected: u64,
        /// What the segment holds.
        found: u64,
    },
    /// The segment was made by another layout version.
    #[error("layout version {expected} expected, segment has {found}")]
    VersionMismatch {
        /// [`LAYOUT_VERSION`].
        expected: u32,
        /// What the segment holds.
        found: u32,
    },
    /// The header's idea of the segment's size disagrees with the mapping.
    #[error("segment header says {header} bytes, the mapping has {mapped}")]
    LengthMismatch {
        /// Length recorded in the header.
        header: u64,
        /// Length of the mapping.
        mapped: u64,
    },
    /// The control block length is not [`CONTROL_LEN`].
    #[error("control block of {found} bytes, expected {expected}")]
    BadControlLen {
        /// [`CONTROL_LEN`].
        expected: u32,
        /// What the segment holds.
        found: u32,
    },
    /// A ring capacity in the header is invalid.
    #[error("bad {ring} ring capacity: {source}")]
    BadCapacity {
        /// Which ring: "task" or "result".
        ring: &'static str,
        /// What is wrong with it.
        source: CapacityError,
    },
    /// The ring offsets are not where the capacities put them.
    #[error("ring offsets disagree with the capacities: header {header:?}, expected {expected:?}")]
    BadOffsets {
        /// Offsets and length from the header (task offset, result offset, segment length).
        header: (u64, u64, u64),
        /// What the capacities imply.
        expected: (u64, u64, u64),
    },
    /// A ring header does not carry the ring magic or disagrees with the segment header.
    #[error("{ring} ring header is inconsistent with the segment header")]
    BadRingHeader {
        /// Which ring: "task" or "result".
        ring: &'static str,
    },
}

/// The control block of a segment. `None` if the segment is too small or misaligned.
pub fn control_block(segment: &Segment) -> Option<&ControlBlock> {
    // SAFETY: the segment's mapping is valid for reads and writes for as long as `segment` is
    // borrowed, and this crate never forms `&mut` references to segment bytes.
    unsafe { shared_ref::<ControlBlock>(segment.as_ptr(), segment.len(), 0) }
}

/// The ring header at `offset`. `None` if it would not lie inside the segment.
pub fn ring_header(segment: &Segment, offset: u64) -> Option<&RingHeader> {
    let offset = usize::try_from(offset).ok()?;
    // SAFETY: as in `control_block`: mapped for the borrow, never aliased mutably.
    unsafe { shared_ref::<RingHeader>(segment.as_ptr(), segment.len(), offset) }
}

/// Writes a fresh control block and both ring headers into a zeroed segment laid out by
/// `plan`, publishing [`LAYOUT_VERSION`] last. Creator only, before any other process can use
/// the segment.
///
/// # Panics
/// If the segment is smaller than `plan.segment_len` (a bug in the caller, which sized it).
pub fn initialize(segment: &Segment, plan: &SegmentPlan) {
    assert!(
        segment.len() as u64 >= plan.segment_len,
        "segment smaller than its plan"
    );
    let control = control_block(segment).expect("segment holds a control block");
    let header = &control.header;
    header.magic.store(MAGIC, Ordering::Relaxed);
    header
        .control_len
        .store(CONTROL_LEN as u32, Ordering::Relaxed);
    header
        .segment_len
        .store(plan.segment_len, Ordering::Relaxed);
    header
        .task_ring_offset
        .store(plan.task_ring_offset, Ordering::Relaxed);
    header
        .task_ring_capacity
        .store(plan.task_ring_capacity, Ordering::Relaxed);
    header
        .result_ring_offset
        .store(plan.result_ring_offset, Ordering::Relaxed);
    header
        .result_ring_capacity
        .store(plan.result_ring_capacity, Ordering::Relaxed);
    header
        .created_unix_ms
        .store(sys::unix_millis(), Ordering::Relaxed);
    header
        .creator_pid
        .store(sys::current_pid(), Ordering::Relaxed);
    for (offset, capacity) in [
        (plan.task_ring_offset, plan.task_ring_capacity),
        (plan.result_ring_offset, plan.result_ring_capacity),
    ] {
        let ring = ring_header(segment, offset).expect("plan places rings inside the segment");
        ring::init_header(
            ring,
            capacity,
            offset + crate::layout::RING_HEADER_LEN as u64,
        );
    }
    // SYNC: pairs with the Acquire load in `wait_initialized`: everything above is visible to
    // an opener that sees the version.
    header
        .layout_version
        .store(LAYOUT_VERSION, Ordering::Release);
}

/// Waits (polling, up to `timeout`) until the creator has published the layout version.
fn wait_initialized(control: &ControlBlock, timeout: Duration) -> Result<u32, LayoutError> {
    let start = Instant::now();
    loop {
        // SYNC: pairs with the Release store at the end of `initialize`.
        let version = control.header.layout_version.load(Ordering::Acquire);
        if version != 0 {
            return Ok(version);
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(LayoutError::NotInitialized { waited });
        }
        std::thread::sleep(Duration::from_millis(1).min(timeout - waited));
    }
}

/// Checks a segment made by another process (waiting up to `timeout` for its creator to finish)
/// and returns where its parts are: magic, layout version, sizes against the mapping, ring
/// capacities and offsets, ring headers, in that order. Every value is read once and checked.
pub fn validate(segment: &Segment, timeout: Duration) -> Result<SegmentPlan, LayoutError> {
    let control = control_block(segment).ok_or(LayoutError::TooSmall { len: segment.len() })?;
    let version = wait_initialized(control, timeout)?;
    let header = &control.header;
    let magic = header.magic.load(Ordering::Relaxed);
    if magic != MAGIC {
        return Err(LayoutError::BadMagic {
            expected: MAGIC,
            found: magic,
        });
    }
    if version != LAYOUT_VERSION {
        return Err(LayoutError::VersionMismatch {
            expected: LAYOUT_VERSION,
            found: version,
        });
    }
    let control_len = header.control_len.load(Ordering::Relaxed);
    if control_len != CONTROL_LEN as u32 {
        return Err(LayoutError::BadControlLen {
            expected: CONTROL_LEN as u32,
            found: control_len,
        });
    }
    let segment_len = header.segment_len.load(Ordering::Relaxed);
    if segment_len != segment.len() as u64 {
        return Err(LayoutError::LengthMismatch {
            header: segment_len,
            mapped: segment.len() as u64,
        });
    }
    let task_capacity = header.task_ring_capacity.load(Ordering::Relaxed);
    let result_capacity = header.result_ring_capacity.load(Ordering::Relaxed);
    ring::validate_capacity(task_capacity).map_err(|source| LayoutError::BadCapacity {
        ring: "task",
        source,
    })?;
    ring::validate_capacity(result_capacity).map_err(|source| LayoutError::BadCapacity {
        ring: "result",
        source,
    })?;
    let found = (
        header.task_ring_offset.load(Ordering::Relaxed),
        header.result_ring_offset.load(Ordering::Relaxed),
        segment_len,
    );
    let plan = SegmentPlan::new(task_capacity, result_capacity);
    let expected = plan.map(|p| (p.task_ring_offset, p.result_ring_offset, p.segment_len));
    let plan = match plan {
        Some(plan) if Some(found) == expected => plan,
        _ => {
            return Err(LayoutError::BadOffsets {
                header: found,
                expected: expected.unwrap_or_default(),
            })
        }
    };
    for (ring, offset, capacity) in [
        ("task", plan.task_ring_offset, plan.task_ring_capacity),
        ("result", plan.result_ring_offset, plan.result_ring_capacity),
    ] {
        let header = ring_header(segment, offset).ok_or(LayoutError::BadRingHeader { ring })?;
        let consistent = header.magic.load(Ordering::Relaxed) == crate::layout::RING_MAGIC
            && header.capacity.load(Ordering::Relaxed) == capacity
            && header.data_offset.load(Ordering::Relaxed)
                == offset + crate::layout::RING_HEADER_LEN as u64;
        if !consistent {
            return Err(LayoutError::BadRingHeader { ring });
        }
    }
    Ok(plan)
}

/// Why a role could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Another live process holds the role.
    #[error("the {role} role is held by a live process (pid {pid})")]
    RoleTaken {
        /// The role asked for.
        role: &'static str,
        /// Pid recorded in its side block (0 if none was recorded yet).
        pid: u32,
    },
    /// The segment is too small to hold a control block.
    #[error("segment too small for a control block")]
    NoControlBlock,
    /// Taking the role lock failed.
    #[error("taking the role lock: {0}")]
    Sys(#[from] SysError),
    /// The heartbeat thread could not be started.
    #[error("starting the heartbeat thread: {0}")]
    Beater(std::io::Error),
}

/// Shortest heartbeat interval accepted; shorter ones are raised to it (a zero interval would
/// make the beater spin).
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(1);

/// A snapshot of one side block, as read (untrusted) from shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SideSnapshot {
    /// Recorded pid (0 if the side never attached).
    pub pid: u32,
    /// Decoded state; `None` if the word holds a value no shmex process writes.
    pub state: Option<SideState>,
    /// The raw state word.
    pub state_word: u32,
    /// Restart epoch: 0 before the first attach, then incremented by each incarnation.
    pub epoch: u64,
    /// Heartbeat counter.
    pub heartbeat: u64,
    /// Heartbeat interval the side announced.
    pub heartbeat_interval: Duration,
    /// Wall-clock attach time in milliseconds since the Unix epoch.
    pub attached_unix_ms: u64,
}

/// Reads one side block.
pub fn snapshot(control: &ControlBlock, role: Role) -> SideSnapshot {
    let side = &control.sides[role.index()];
    // SYNC: pairs with the Release store of `state` in `Attachment::attach`/`Drop`, so the pid
    // and epoch read below are at least as new as the state.
    let state_word = side.state.load(Ordering::Acquire);
    SideSnapshot {
        pid: side.pid.load(Ordering::Relaxed),
        state: SideState::from_word(state_word),
        state_word,
        epoch: side.epoch.load(Ordering::Relaxed),
        heartbeat: side.heartbeat.load(Ordering::Relaxed),
        heartbeat_interval: Duration::from_nanos(
            side.heartbeat_interval_ns.load(Ordering::Relaxed),
        ),
        attached_unix_ms: side.attached_unix_ms.load(Ordering::Relaxed),
    }
}

/// Whether the process holding `role` on this segment is alive according to the OS: `Some`
/// only for named segments (heap segments have no locks).
pub fn role_lock_held(segment: &Segment, role: Role) -> Result<Option<bool>, SysError> {
    match segment.fd() {
        Some(fd) => sys::byte_locked_elsewhere(fd, role.lock_byte()).map(Some),
        None => Ok(None),
    }
}

/// This process's hold on one role of a segment: the role lock, the side block it owns and
/// the background heartbeat. Dropping it marks the side closed, stops the beater and releases
/// the lock.
pub struct Attachment {
    segment: Arc<Segment>,
    role: Role,
    epoch: u64,
    beater: Option<(Arc<StopSignal>, JoinHandle<()>)>,
    lock: Arc<RoleLock>,
}

/// The role lock this process holds on a segment, released when the last clone is dropped:
/// by the [`Attachment`], or later by what must keep other processes (and later attachments
/// in this one) out of the role, such as records of the incoming ring still read in place
/// ([`crate::ring::RingHold`]).
#[derive(Debug)]
pub struct RoleLock {
    segment: Arc<Segment>,
    role: Role,
}

impl Drop for RoleLock {
    fn drop(&mut self) {
        if let Some(fd) = self.segment.fd() {
            let _ = sys::unlock_byte(fd, self.role.lock_byte());
        }
    }
}

/// Tells the beater thread to stop: a flag and the condvar it sleeps on.
type StopSignal = (Mutex<bool>, Condvar);

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("role", &self.role)
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl Attachment {
    /// Takes `role` on `segment`: the role lock (a live holder yields
    /// [`AttachError::RoleTaken`]), a new epoch, our pid, state "attached", and a beater that
    /// advances the heartbeat every `heartbeat_interval` (at least
    /// [`MIN_HEARTBEAT_INTERVAL`]).
    pub fn attach(
        segment: Arc<Segment>,
        role: Role,
        heartbeat_interval: Duration,
    ) -> Result<Attachment, AttachError> {
        let heartbeat_interval = heartbeat_interval.max(MIN_HEARTBEAT_INTERVAL);
        let control = control_block(&segment).ok_or(AttachError::NoControlBlock)?;
        if let Some(fd) = segment.fd() {
            if sys::try_lock_byte(fd, role.lock_byte())? == LockAttempt::HeldElsewhere {
                return Err(AttachError::RoleTaken {
                    role: role.name(),
                    pid: snapshot(control, role).pid,
                });
            }
        }
        let side = &control.sides[role.index()];
        let epoch = side.epoch.load(Ordering::Relaxed).wrapping_add(1);
        side.epoch.store(epoch, Ordering::Relaxed);
        side.pid.store(sys::current_pid(), Ordering::Relaxed);
        side.heartbeat_interval_ns.store(
            u64::try_from(heartbeat_interval.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        side.attached_unix_ms
            .store(sys::unix_millis(), Ordering::Relaxed);
        side.heartbeat.fetch_add(1, Ordering::Relaxed);
        // SYNC: pairs with the Acquire load in `snapshot`.
        side.state
            .store(SideState::Attached.to_word(), Ordering::Release);
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let beater = {
            let segment = Arc::clone(&segment);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("shmex-heartbeat-{}", role.name()))
                .spawn(move || beat(&segment, role, heartbeat_interval, &stop))
        };
        let lock = Arc::new(RoleLock {
            segment: Arc::clone(&segment),
            role,
        });
        let mut attachment = Attachment {
            segment,
            role,
            epoch,
            beater: None,
            lock,
        };
        match beater {
            Ok(handle) => {
                attachment.beater = Some((stop, handle));
                Ok(attachment)
            }
            // Dropping the attachment marks the side closed and releases the lock.
            Err(e) => Err(AttachError::Beater(e)),
        }
    }

    /// The role held.
    pub fn role(&self) -> Role {
        self.role
    }

    /// This incarnation's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The segment.
    pub fn segment(&self) -> &Arc<Segment> {
        &self.segment
    }

    /// The role lock, to keep the role held past this attachment (see [`RoleLock`]).
    pub fn role_lock(&self) -> Arc<RoleLock> {
        Arc::clone(&self.lock)
    }

    fn side(&self) -> Option<&SideBlock> {
        control_block(&self.segment).map(|c| &c.sides[self.role.index()])
    }
}

/// The beater: advances the side's heartbeat every `interval` until told to stop.
fn beat(segment: &Segment, role: Role, interval: Duration, stop: &StopSignal) {
    let Some(control) = control_block(segment) else {
        return;
    };
    let heartbeat = &control.sides[role.index()].heartbeat;
    let (stopped, wake) = stop;
    let mut guard = stopped.lock().unwrap_or_else(|e| e.into_inner());
    while !*guard {
        heartbeat.fetch_add(1, Ordering::Relaxed);
        guard = wake
            .wait_timeout(guard, interval)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.beater.take() {
            *stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
            stop.1.notify_all();
            let _ = handle.join();
        }
        if let Some(side) = self.side() {
            // SYNC: pairs with the Acquire load in `snapshot`.
            side.state
                .store(SideState::Closed.to_word(), Ordering::Release);
        }
        // The role lock goes with the `lock` field, unless a clone still holds it.
    }
}

/// A verdict on one side of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// The side has never attached.
    Absent,
    /// Attached, process alive, heartbeat advancing.
    Alive,
    /// Attached and its process alive (or unknown), but its heartbeat has not advanced for
    /// `silent_for` (at least the staleness timeout): hung, paused, or starved.
    Stale {
        /// How long the heartbeat has been still, as seen by this observer.
        silent_for: Duration,
    },
    /// Its process died without detaching (the OS released its role lock).
    Dead {
        /// The pid it had.
        pid: u32,
    },
    /// It detached cleanly.
    Closed,
    /// The side block holds a state word no shmex process writes (corrupted).
    Corrupt {
        /// The state word found.
        state_word: u32,
    },
}

/// How long a side may read "absent" while its role lock is held before the word counts as
/// corrupt: a process attaching holds the lock for the instant before it publishes
/// "attached", and nothing else leaves a locked side absent.
pub const ATTACH_WINDOW: Duration = Duration::from_millis(500);

/// Watches one side of a link and turns its side block and role lock into [`Liveness`]
/// verdicts. Staleness needs memory of past observations, so the monitor is stateful.
#[derive(Debug)]
pub struct PeerMonitor {
    segment: Arc<Segment>,
    role: Role,
    last_heartbeat: u64,
    last_epoch: u64,
    last_change: Instant,
    /// Since when the side has read "absent" while its role lock is held.
    absent_while_locked: Option<Instant>,
}

impl PeerMonitor {
    /// Watches `role` on `segment`.
    pub fn new(segment: Arc<Segment>, role: Role) -> PeerMonitor {
        let (heartbeat, epoch) = control_block(&segment)
            .map(|c| {
                let s = snapshot(c, role);
                (s.heartbeat, s.epoch)
            })
            .unwrap_or_default();
        PeerMonitor {
            segment,
            role,
            last_heartbeat: heartbeat,
            last_epoch: epoch,
            last_change: Instant::now(),
            absent_while_locked: None,
        }
    }

    /// The watched role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The side's current verdict; `stale_after` is how long a still heartbeat is tolerated.
    ///
    /// The role lock is the witness for the state word: a word no shmex process writes is
    /// [`Liveness::Corrupt`] while the lock is held (or on a heap segment, which has no
    /// locks) and [`Liveness::Dead`] once it is released; "absent" while the lock is held for
    /// longer than [`ATTACH_WINDOW`] is [`Liveness::Corrupt`] too, since only a process in the
    /// middle of attaching leaves its locked side absent.
    pub fn verdict(&mut self, stale_after: Duration) -> Liveness {
        let Some(control) = control_block(&self.segment) else {
            return Liveness::Corrupt { state_word: 0 };
        };
        let now = Instant::now();
        let side = snapshot(control, self.role);
        if side.heartbeat != self.last_heartbeat || side.epoch != self.last_epoch {
            self.last_heartbeat = side.heartbeat;
            self.last_epoch = side.epoch;
            self.last_change = now;
        }
        let corrupt = Liveness::Corrupt {
            state_word: side.state_word,
        };
        if side.state != Some(SideState::Absent) {
            self.absent_while_locked = None;
        }
        match side.state {
            None => match role_lock_held(&self.segment, self.role) {
                // The process that held the role is gone; what it left says nothing more.
                Ok(Some(false)) => Liveness::Dead { pid: side.pid },
                _ => corrupt,
            },
            Some(SideState::Absent) => {
                if !matches!(role_lock_held(&self.segment, self.role), Ok(Some(true))) {
                    self.absent_while_locked = None;
                    return Liveness::Absent;
                }
                let since = *self.absent_while_locked.get_or_insert(now);
                if now.saturating_duration_since(since) >= ATTACH_WINDOW {
                    corrupt
                } else {
                    Liveness::Absent
                }
            }
            Some(SideState::Closed) => Liveness::Closed,
            Some(SideState::Attached) => {
                if matches!(role_lock_held(&self.segment, self.role), Ok(Some(false))) {
                    return Liveness::Dead { pid: side.pid };
                }
                let silent_for = now.saturating_duration_since(self.last_change);
                if silent_for >= stale_after {
                    Liveness::Stale { silent_for }
                } else {
                    Liveness::Alive
                }
            }
        }
    }

    /// The peer's current epoch and pid.
    pub fn epoch_and_pid(&self) -> (u64, u32) {
        control_block(&self.segment)
            .map(|c| {
                let s = snapshot(c, self.role);
                (s.epoch, s.pid)
            })
            .unwrap_or_default()
    }
}

/// The [`PeerCheck`] blocking ring calls use between sleep slices: fails only when the peer's
/// process is dead or it detached (an absent or stale peer may still come or recover).
#[derive(Debug)]
pub struct LockPeerCheck {
    segment: Arc<Segment>,
    role: Role,
}

impl LockPeerCheck {
    /// Checks `role` on `segment`.
    pub fn new(segment: Arc<Segment>, role: Role) -> LockPeerCheck {
        LockPeerCheck { segment, role }
    }
}

impl PeerCheck for LockPeerCheck {
    fn check(&self) -> Result<(), PeerLost> {
        let Some(control) = control_block(&self.segment) else {
            return Ok(());
        };
        let side = snapshot(control, self.role);
        match side.state {
            Some(SideState::Absent) => Ok(()),
            Some(SideState::Closed) => Err(PeerLost::Closed),
            // Attached, or a state word no shmex process writes: the OS lock decides, so a
            // peer that scribbled its state and died is still reported dead.
            Some(SideState::Attached) | None => {
                if matches!(role_lock_held(&self.segment, self.role), Ok(Some(false))) {
                    Err(PeerLost::Dead { pid: side.pid })
                } else {
                    Ok(())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap_segment(task: u64, result: u64) -> (Segment, SegmentPlan) {
        let plan = SegmentPlan::new(task, result).unwrap();
        let segment = Segment::heap(plan.segment_len as usize);
        (segment, plan)
    }

    #[test]
    fn initialized_segment_validates_to_its_plan() {
        let (segment, plan) = heap_segment(64 * 1024, 8192);
        initialize(&segment, &plan);
        assert_eq!(validate(&segment, Duration::ZERO).unwrap(), plan);
    }

    #[test]
    fn uninitialized_segment_times_out() {
        let (segment, _) = heap_segment(8192, 8192);
        assert!(matches!(
            validate(&segment, Duration::from_millis(5)),
            Err(LayoutError::NotInitialized { .. })
        ));
    }

    #[test]
    fn header_checks_come_in_order_and_name_both_values() {
        let (segment, plan) = heap_segment(8192, 8192);
        initialize(&segment, &plan);
        let header = &control_block(&segment).unwrap().header;
        header
            .layout_version
            .store(LAYOUT_VERSION + 1, Ordering::Relaxed);
        let err = validate(&segment, Duration::ZERO).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "layout version {} expected, segment has {}",
                LAYOUT_VERSION,
                LAYOUT_VERSION + 1
            )
        );
        header.magic.store(7, Ordering::Relaxed);
        assert!(matches!(
            validate(&segment, Duration::ZERO),
            Err(LayoutError::BadMagic { found: 7, .. })
        ));
        header.magic.store(MAGIC, Ordering::Relaxed);
        header
            .layout_version
            .store(LAYOUT_VERSION, Ordering::Relaxed);
        header.segment_len.store(1 << 40, Ordering::Relaxed);
        assert!(matches!(
            validate(&segment, Duration::ZERO),
            Err(LayoutError::LengthMismatch { .. })
        ));
        header
            .segment_len
            .store(plan.segment_len, Ordering::Relaxed);
        header.task_ring_capacity.store(100, Ordering::Relaxed);
        assert!(matches!(
            validate(&segment, Duration::ZERO),
            Err(LayoutError::BadCapacity { ring: "task", .. })
        ));
        header.task_ring_capacity.store(4096, Ordering::Relaxed);
        assert!(matches!(
            validate(&segment, Duration::ZERO),
            Err(LayoutError::BadOffsets { .. })
        ));
        header.task_ring_capacity.store(8192, Ordering::Relaxed);
        let ring = ring_header(&segment, plan.result_ring_offset).unwrap();
        ring.capacity.store(64, Ordering::Relaxed);
        assert!(matches!(
            validate(&segment, Duration::ZERO),
            Err(LayoutError::BadRingHeader { ring: "result" })
        ));
    }

    #[test]
    fn attach_bumps_epoch_and_detach_closes() {
        let (segment, plan) = heap_segment(8192, 8192);
        initialize(&segment, &plan);
        let segment = Arc::new(segment);
        let mut monitor = PeerMonitor::new(Arc::clone(&segment), Role::Agent);
        assert_eq!(monitor.verdict(Duration::from_secs(60)), Liveness::Absent);
        let first = Attachment::attach(Arc::clone(&segment), Role::Agent, Duration::from_millis(1))
            .unwrap();
        assert_eq!(first.epoch(), 1);
        assert_eq!(monitor.verdict(Duration::from_secs(60)), Liveness::Alive);
        drop(first);
        assert_eq!(monitor.verdict(Duration::from_secs(60)), Liveness::Closed);
        let check = LockPeerCheck::new(Arc::clone(&segment), Role::Agent);
        assert_eq!(check.check(), Err(PeerLost::Closed));
        let second =
            Attachment::attach(Arc::clone(&segment), Role::Agent, Duration::from_secs(3600))
                .unwrap();
        assert_eq!(second.epoch(), 2);
        assert_eq!(check.check(), Ok(()));
        assert_eq!(monitor.epoch_and_pid(), (2, std::process::id()));
    }

    #[test]
    fn heartbeat_advances_and_a_still_one_goes_stale() {
        let (segment, plan) = heap_segment(8192, 8192);
        initialize(&segment, &plan);
        let segment = Arc::new(segment);
        let side = Attachment::attach(
            Arc::clone(&segment),
            Role::Exchanger,
            Duration::from_millis(1),
        )
        .unwrap();
        let control = control_block(&segment).unwrap();
        let before = snapshot(control, Role::Exchanger).heartbeat;
        let deadline = Instant::now() + Duration::from_secs(10);
        while snapshot(control, Role::Exchanger).heartbeat < before + 3 {
            assert!(Instant::now() < deadline, "heartbeat did not advance");
            std::thread::sleep(Duration::from_millis(1));
        }
        // A zero tolerance makes any still moment stale; a beating side is alive under a
        // generous one.
        let mut monitor = PeerMonitor::new(Arc::clone(&segment), Role::Exchanger);
        assert_eq!(monitor.verdict(Duration::from_secs(60)), Liveness::Alive);
        drop(side);
        assert_eq!(monitor.verdict(Duration::ZERO), Liveness::Closed);
    }

    #[test]
    fn a_still_heartbeat_goes_stale() {
        let (segment, plan) = heap_segment(8192, 8192);
        initialize(&segment, &plan);
        let segment = Arc::new(segment);
        // A one-hour interval: after attaching, the heartbeat does not move again.
        let _side =
            Attachment::attach(Arc::clone(&segment), Role::Agent, Duration::from_secs(3600))
                .unwrap();
        // Wait for the beater's first beat (attach counts 1, the beater's first beat 2), so
        // that nothing moves the heartbeat while the monitor watches.
        let control = control_block(&segment).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while snapshot(control, Role::Agent).heartbeat < 2 {
            assert!(Instant::now() < deadline, "beater never beat");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut monitor = PeerMonitor::new(Arc::clone(&segment), Role::Agent);
        assert_eq!(monitor.verdict(Duration::from_secs(60)), Liveness::Alive);
        std::thread::sleep(Duration::from_millis(30));
        match monitor.verdict(Duration::from_millis(20)) {
            Liveness::Stale { silent_for } => assert!(silent_for >= Duration::from_millis(20)),
            other => panic!("expected Stale, got {other:?}"),
        }
    }

    #[test]
    fn a_state_word_contradicting_a_held_role_lock_is_corrupt() {
        let name = crate::segment::SegmentName::new(format!(
            "shmex.test.control.corrupt.{}",
            std::process::id()
        ))
        .unwrap();
        let plan = SegmentPlan::new(8192, 8192).unwrap();
        let created = Segment::create(&name, plan.segment_len, true, false).unwrap();
        initialize(&created, &plan);
        let opened = Arc::new(Segment::open(&name, false).unwrap());
        created.unlink().unwrap();
        let agent = Attachment::attach(Arc::clone(&opened), Role::Agent, Duration::from_secs(3600))
            .unwrap();
        let mut monitor = PeerMonitor::new(Arc::new(created), Role::Agent);
        assert_eq!(monitor.verdict(Duration::from_secs(60)), Liveness::Alive);
        let state = &control_block(&opened).unwrap().sides[Role::Agent.index()].state;
        state.store(u32::MAX, Ordering::Release);
        assert_eq!(
            monitor.verdict(Duration::from_secs(60)),
            Liveness::Corrupt {
                state_word: u32::MAX
            }
        );
        // "Absent" under a held lock: tolerated for the attach window, then corrupt.
        state.store(0, Ordering::Release);
        assert_eq!(monitor.verdict(Duration::from_secs(60)), Liveness::Absent);
        std::thread::sleep(ATTACH_WINDOW);
        assert_eq!(
            monitor.verdict(Duration::from_secs(60)),
            Liveness::Corrupt { state_word: 0 }
        );
        // Once the lock is gone, a scribbled word is a dead peer, not a corrupt live one.
        let pid = snapshot(control_block(&opened).unwrap(), Role::Agent).pid;
        drop(agent);
        state.store(u32::MAX, Ordering::Release);
        assert_eq!(
            monitor.verdict(Duration::from_secs(60)),
            Liveness::Dead { pid }
        );
    }

    #[test]
    fn corrupt_state_word_is_reported() {
        let (segment, plan) = heap_segment(8192, 8192);
        initialize(&segment, &plan);
        let segment = Arc::new(segment);
        control_block(&segment).unwrap().sides[1]
            .state
            .store(99, Ordering::Relaxed);
        let mut monitor = PeerMonitor::new(Arc::clone(&segment), Role::Agent);
        assert_eq!(
            monitor.verdict(Duration::from_secs(1)),
            Liveness::Corrupt { state_word: 99 }
        );
    }
}
