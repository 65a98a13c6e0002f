//! A bidirectional link between the exchanger and the agent over one segment.
//!
//! The exchanger [`Link::create`]s the segment and owns it (it unlinks the name when it is
//! dropped); the agent [`Link::attach`]es, waiting up to a timeout for the exchanger to appear.
//! Each side gets the producer half of one ring and the consumer half of the other:
//! tasks flow exchanger → agent, results agent → exchanger. Blocking ring calls on a link
//! notice a dead or departed peer between sleep slices (see [`crate::signal`]).
//!
//! ```no_run
//! use shmex::link::{AttachOptions, CreateOptions, Link};
//! use shmex::segment::SegmentName;
//! use std::time::{Duration, Instant};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let name = SegmentName::for_agent("site-1", "trainer")?;
//! // In the FL-client process:
//! let mut exchanger = Link::create(&name, &CreateOptions::default())?;
//! exchanger.sender().push(b"task bytes", Some(Instant::now() + Duration::from_secs(5)))?;
//! // In the trainer process:
//! let mut agent = Link::attach(&name, &AttachOptions::default())?;
//! let mut task = Vec::new();
//! agent.receiver().pop_into(&mut task, Some(Instant::now() + Duration::from_secs(5)))?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::control::{self, AttachError, Attachment, LayoutError, LockPeerCheck, PeerMonitor};
use crate::layout::{SegmentPlan, RING_HEADER_LEN};

pub use crate::control::{Liveness, SideSnapshot};
pub use crate::layout::{Role, SideState};
use crate::ring::{self, CapacityError, Consumer, Producer, RingCorruption};
use crate::segment::{self, OpenError, Segment, SegmentName};
use crate::signal::{self, Signals, WaitStrategy};

/// Default data bytes of each ring: large enough to stream at memory speed, small enough to
/// stay cheap in `/dev/shm`.
pub const DEFAULT_RING_CAPACITY: u64 = 16 << 20;

/// Smallest data bytes of a link's ring: room for a 64-byte fragment header, the ring's record
/// header and a useful body, so that every message the frame layer sends (fragmented if need
/// be) fits. Smaller capacities are refused at creation ([`LinkCreateError::RingTooSmall`])
/// and when attaching ([`LinkAttachError::RingTooSmall`]).
pub const MIN_RING_CAPACITY: u64 = 4096;

/// Default interval of the heartbeat each side advances: FLARE's `agent_heartbeat_interval`
/// (5 s), the protocol's default too. Liveness does not wait for it: a dead process is noticed
/// through its OS lock.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Default time an agent waits for a live exchanger to appear: FLARE's
/// `flare_site_connection_timeout` (60 s), the protocol's default too.
pub const DEFAULT_ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

/// Options for [`Link::create`] (the exchanger side). Ring sizes are fixed at creation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreateOptions {
    /// Data bytes of the task ring (exchanger → agent), at least [`MIN_RING_CAPACITY`].
    /// Default [`DEFAULT_RING_CAPACITY`].
    pub task_ring_capacity: u64,
    /// Data bytes of the result ring (agent → exchanger), at least [`MIN_RING_CAPACITY`].
    /// Default [`DEFAULT_RING_CAPACITY`].
    pub result_ring_capacity: u64,
    /// Interval of our heartbeat. Default [`DEFAULT_HEARTBEAT_INTERVAL`].
    pub heartbeat_interval: Duration,
    /// How blocking calls wait (spin, then sleep slices between liveness checks).
    pub wait: WaitStrategy,
    /// Replace a segment of the same name whose owner died (default `true`). A live owner's
    /// segment is never touched.
    pub reclaim_stale: bool,
    /// Pre-fault the segment's pages at creation (default `true`).
    pub populate: bool,
}

/// Setters, one per field (the struct is `#[non_exhaustive]`: build it from `default()`).
impl CreateOptions {
    /// Sets [`CreateOptions::task_ring_capacity`].
    #[must_use]
    pub fn task_ring_capacity(mut self, task_ring_capacity: u64) -> Self {
        self.task_ring_capacity = task_ring_capacity;
        self
    }

    /// Sets [`CreateOptions::result_ring_capacity`].
    #[must_use]
    pub fn result_ring_capacity(mut self, result_ring_capacity: u64) -> Self {
        self.result_ring_capacity = result_ring_capacity;
        self
    }

    /// Sets [`CreateOptions::heartbeat_interval`].
    #[must_use]
    pub fn heartbeat_interval(mut self, heartbeat_interval: Duration) -> Self {
        self.heartbeat_interval = heartbeat_interval;
        self
    }

    /// Sets [`CreateOptions::wait`].
    #[must_use]
    pub fn wait(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    /// Sets [`CreateOptions::reclaim_stale`].
    #[must_use]
    pub fn reclaim_stale(mut self, reclaim_stale: bool) -> Self {
        self.reclaim_stale = reclaim_stale;
        self
    }

    /// Sets [`CreateOptions::populate`].
    #[must_use]
    pub fn populate(mut self, populate: bool) -> Self {
        self.populate = populate;
        self
    }
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            task_ring_capacity: DEFAULT_RING_CAPACITY,
            result_ring_capacity: DEFAULT_RING_CAPACITY,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            wait: WaitStrategy::default(),
            reclaim_stale: true,
            populate: true,
        }
    }
}

impl CreateOptions {
    /// Sets both ring capacities.
    pub fn ring_capacity(mut self, bytes: u64) -> Self {
        self.task_ring_capacity = bytes;
        self.result_ring_capacity = bytes;
        self
    }

    fn plan(&self) -> Result<SegmentPlan, LinkCreateError> {
        ring::validate_capacity(self.task_ring_capacity).map_err(|source| {
            LinkCreateError::Capacity {
                ring: "task",
                source,
            }
        })?;
        ring::validate_capacity(self.result_ring_capacity).map_err(|source| {
            LinkCreateError::Capacity {
                ring: "result",
                source,
            }
        })?;
        for (ring, capacity) in [
            ("task", self.task_ring_capacity),
            ("result", self.result_ring_capacity),
        ] {
            if capacity < MIN_RING_CAPACITY {
                return Err(LinkCreateError::RingTooSmall {
                    ring,
                    capacity,
                    min: MIN_RING_CAPACITY,
                });
            }
        }
        SegmentPlan::new(self.task_ring_capacity, self.result_ring_capacity)
            .filter(|plan| usize::try_from(plan.segment_len).is_ok())
            .ok_or(LinkCreateError::TooLarge)
    }
}

/// Options for [`Link::attach`] (the agent side).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AttachOptions {
    /// How long to wait for the exchanger to create and initialise the segment (default
    /// [`DEFAULT_ATTACH_TIMEOUT`], 60 s).
    pub attach_timeout: Duration,
    /// Interval of our heartbeat. Default [`DEFAULT_HEARTBEAT_INTERVAL`].
    pub heartbeat_interval: Duration,
    /// How blocking calls wait.
    pub wait: WaitStrategy,
    /// Pre-fault the segment's pages when mapping (default `true`).
    pub populate: bool,
}

/// Setters, one per field (the struct is `#[non_exhaustive]`: build it from `default()`).
impl AttachOptions {
    /// Sets [`AttachOptions::attach_timeout`].
    #[must_use]
    pub fn attach_timeout(mut self, attach_timeout: Duration) -> Self {
        self.attach_timeout = attach_timeout;
        self
    }

    /// Sets [`AttachOptions::heartbeat_interval`].
    #[must_use]
    pub fn heartbeat_interval(mut self, heartbeat_interval: Duration) -> Self {
        self.heartbeat_interval = heartbeat_interval;
        self
    }

    /// Sets [`AttachOptions::wait`].
    #[must_use]
    pub fn wait(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    /// Sets [`AttachOptions::populate`].
    #[must_use]
    pub fn populate(mut self, populate: bool) -> Self {
        self.populate = populate;
        self
    }
}

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            attach_timeout: DEFAULT_ATTACH_TIMEOUT,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            wait: WaitStrategy::default(),
            populate: true,
        }
    }
}

/// Why [`Link::create`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkCreateError {
    /// A ring capacity is invalid.
    #[error("invalid {ring} ring capacity: {source}")]
    Capacity {
        /// "task" or "result".
        ring: &'static str,
        /// What is wrong.
        source: CapacityError,
    },
    /// A ring capacity is valid for a bare ring but below [`MIN_RING_CAPACITY`], too small
    /// for the frames a link carries.
    #[error("{ring} ring capacity {capacity} is below the link minimum of {min} bytes")]
    RingTooSmall {
        /// "task" or "result".
        ring: &'static str,
        /// The capacity asked for.
        capacity: u64,
        /// [`MIN_RING_CAPACITY`].
        min: u64,
    },
    /// The segment would not fit this process's address space.
    #[error("ring capacities add up to more than the address space holds")]
    TooLarge,
    /// The segment could not be created.
    #[error(transparent)]
    Segment(#[from] segment::CreateError),
    /// The exchanger role could not be taken.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// A freshly initialised ring failed its own checks (a bug, reported rather than hidden).
    #[error("fresh ring: {0}")]
    Ring(#[from] RingCorruption),
}

/// What an agent waiting in [`Link::attach`] last saw at the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttachWait {
    /// No segment of that name.
    #[error("no segment")]
    NoSegment,
    /// A segment whose owner died (a new exchanger will reclaim the name).
    #[error("owner dead")]
    OwnerDead,
}

/// Why [`Link::attach`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkAttachError {
    /// No live, initialised segment appeared within the attach timeout.
    #[error("no live exchanger on {name} after {waited:?}: {last_seen}")]
    Timeout {
        /// The segment's name.
        name: SegmentName,
        /// How long we waited.
        waited: Duration,
        /// What was last seen at the name.
        last_seen: AttachWait,
    },
    /// The segment exists but could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The segment's contents are not a usable shmex layout.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The agent role could not be taken (another agent is attached).
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// A ring of the segment is smaller than [`MIN_RING_CAPACITY`] (made by a creator that
    /// did not check it): frames cannot cross it.
    #[error("{ring} ring capacity {capacity} is below the link minimum of {min} bytes")]
    RingTooSmall {
        /// "task" or "result".
        ring: &'static str,
        /// The segment's capacity.
        capacity: u64,
        /// [`MIN_RING_CAPACITY`].
        min: u64,
    },
    /// A ring's positions are corrupt.
    #[error("ring: {0}")]
    Ring(#[from] RingCorruption),
}

/// One side of a link: the producer half of its outgoing ring, the consumer half of its
/// incoming ring, its role attachment (lock, epoch, heartbeat) and a monitor of the peer.
pub struct Link {
    producer: Producer,
    consumer: Consumer,
    // Dropped last: marks the side closed only after the ring halves are gone.
    control: LinkControl,
}

/// A link taken apart ([`Link::into_parts`]) so that its halves can live on different threads
/// (a receiving thread owns the consumer, senders share the producer).
#[derive(Debug)]
pub struct LinkParts {
    /// The producer half of the outgoing ring.
    pub producer: Producer,
    /// The consumer half of the incoming ring.
    pub consumer: Consumer,
    /// The role attachment and the peer monitor. Drop it after both halves: dropping it marks
    /// this side closed (and, for the exchanger, removes the segment's name).
    pub control: LinkControl,
}

/// The part of a link that is neither ring half: this side's role attachment (lock, epoch,
/// heartbeat) and a monitor of the peer. The exchanger's removes the segment's name when
/// dropped.
pub struct LinkControl {
    monitor: PeerMonitor,
    plan: SegmentPlan,
    attachment: Attachment,
}

impl std::fmt::Debug for LinkControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkControl")
            .field("role", &self.role())
            .field("name", &self.name())
            .field("epoch", &self.epoch())
            .finish()
    }
}

impl LinkControl {
    /// This side's role.
    pub fn role(&self) -> Role {
        self.attachment.role()
    }

    /// The segment's name (`None` for an in-process link).
    pub fn name(&self) -> Option<&SegmentName> {
        self.attachment.segment().name()
    }

    /// This side's restart epoch.
    pub fn epoch(&self) -> u64 {
        self.attachment.epoch()
    }

    /// The peer's current restart epoch and pid (0, 0 before it first attached).
    pub fn peer_epoch_and_pid(&self) -> (u64, u32) {
        self.monitor.epoch_and_pid()
    }

    /// The peer's liveness; a heartbeat still for `stale_after` or longer makes it
    /// [`Liveness::Stale`].
    pub fn peer_liveness(&mut self, stale_after: Duration) -> Liveness {
        self.monitor.verdict(stale_after)
    }

    /// A snapshot of one side's block in the control block (untrusted values, as read).
    pub fn side(&self, role: Role) -> Option<SideSnapshot> {
        control::control_block(self.attachment.segment()).map(|c| control::snapshot(c, role))
    }

    /// Where the segment's parts lie.
    pub fn plan(&self) -> &SegmentPlan {
        &self.plan
    }
}

impl Drop for LinkControl {
    fn drop(&mut self) {
        // The owner removes the name; the agent's mapping stays valid until it lets go.
        if self.role() == Role::Exchanger {
            let _ = self.attachment.segment().unlink();
        }
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("role", &self.role())
            .field("name", &self.name())
            .field("epoch", &self.epoch())
            .field("plan", self.plan())
            .finish()
    }
}

impl Link {
    /// Creates the segment `name` and takes the exchanger role. A stale segment of the same
    /// name is reclaimed (see [`CreateOptions::reclaim_stale`]); a live one is refused.
    pub fn create(name: &SegmentName, options: &CreateOptions) -> Result<Link, LinkCreateError> {
        let plan = options.plan()?;
        let segment = Segment::create(
            name,
            plan.segment_len,
            options.reclaim_stale,
            options.populate,
        )?;
        control::initialize(&segment, &plan);
        let segment = Arc::new(segment);
        let link = Link::assemble(
            segment,
            plan,
            Role::Exchanger,
            options.heartbeat_interval,
            options.wait,
        );
        match link {
            Ok(link) => Ok(link),
            Err(e) => {
                let _ = segment::reclaim(name);
                Err(e.into_create())
            }
        }
    }

    /// Attaches to the segment `name` as the agent, waiting up to
    /// [`AttachOptions::attach_timeout`] for a live exchanger to create it.
    pub fn attach(name: &SegmentName, options: &AttachOptions) -> Result<Link, LinkAttachError> {
        let start = Instant::now();
        loop {
            let waited = start.elapsed();
            let remaining = options.attach_timeout.saturating_sub(waited);
            let reason = match Segment::open(name, options.populate) {
                Ok(segment) => {
                    let plan = control::validate(&segment, remaining)?;
                    for (ring, capacity) in [
                        ("task", plan.task_ring_capacity),
                        ("result", plan.result_ring_capacity),
                    ] {
                        if capacity < MIN_RING_CAPACITY {
                            return Err(LinkAttachError::RingTooSmall {
                                ring,
                                capacity,
                                min: MIN_RING_CAPACITY,
                            });
                        }
                    }
                    if control::role_lock_held(&segment, Role::Exchanger).map_err(|source| {
                        OpenError::Sys {
                            name: name.clone(),
                            source,
                        }
                    })? == Some(false)
                    {
                        // The owner died; a new exchanger will reclaim the name.
                        AttachWait::OwnerDead
                    } else {
                        return Link::assemble(
                            Arc::new(segment),
                            plan,
                            Role::Agent,
                            options.heartbeat_interval,
                            options.wait,
                        )
                        .map_err(AssembleError::into_attach);
                    }
                }
                Err(OpenError::NotFound { .. }) => AttachWait::NoSegment,
                Err(e) => return Err(e.into()),
            };
            if remaining.is_zero() {
                return Err(LinkAttachError::Timeout {
                    name: name.clone(),
                    waited,
                    last_seen: reason,
                });
            }
            std::thread::sleep(Duration::from_millis(5).min(remaining));
        }
    }

    /// Two ends of a link over heap memory in this process: (exchanger, agent). For tests,
    /// benchmarks and single-process use; nothing touches `/dev/shm`.
    pub fn in_process(options: &CreateOptions) -> Result<(Link, Link), LinkCreateError> {
        let plan = options.plan()?;
        let len = usize::try_from(plan.segment_len).map_err(|_| LinkCreateError::TooLarge)?;
        let segment = Segment::heap(len);
        control::initialize(&segment, &plan);
        let segment = Arc::new(segment);
        let exchanger = Link::assemble(
            Arc::clone(&segment),
            plan,
            Role::Exchanger,
            options.heartbeat_interval,
            options.wait,
        )
        .map_err(AssembleError::into_create)?;
        let agent = Link::assemble(
            segment,
            plan,
            Role::Agent,
            options.heartbeat_interval,
            options.wait,
        )
        .map_err(AssembleError::into_create)?;
        Ok((exchanger, agent))
    }

    fn assemble(
        segment: Arc<Segment>,
        plan: SegmentPlan,
        role: Role,
        heartbeat_interval: Duration,
        wait: WaitStrategy,
    ) -> Result<Link, AssembleError> {
        let attachment = Attachment::attach(Arc::clone(&segment), role, heartbeat_interval)?;
        let signals = Signals {
            waiter: signal::default_wait_word(),
            peer: Arc::new(LockPeerCheck::new(Arc::clone(&segment), role.peer())),
            strategy: wait,
        };
        let (out_offset, out_capacity, in_offset, in_capacity) = match role {
            Role::Exchanger => (
                plan.task_ring_offset,
                plan.task_ring_capacity,
                plan.result_ring_offset,
                plan.result_ring_capacity,
            ),
            Role::Agent => (
                plan.result_ring_offset,
                plan.result_ring_capacity,
                plan.task_ring_offset,
                plan.task_ring_capacity,
            ),
        };
        let (out_header, out_data) = ring_parts(&segment, out_offset, out_capacity);
        let (in_header, in_data) = ring_parts(&segment, in_offset, in_capacity);
        let keep: Arc<dyn Send + Sync> = Arc::clone(&segment) as Arc<dyn Send + Sync>;
        // The consumer's records can outlive it, read in place (`ReadGrant::hold`): they keep
        // the role lock, so that no later consumer of this ring (here or elsewhere) releases
        // their bytes to the producer while they are read.
        let keep_in: Arc<dyn Send + Sync> =
            Arc::new((Arc::clone(&segment), attachment.role_lock()));
        // SAFETY: `ring_parts` returns pointers into the segment that `validate`/`initialize`
        // laid out by `plan` (header and `capacity` data bytes inside the mapping); `keep`
        // holds the segment mapped for as long as the halves live; this process holds the
        // role lock (or is the only user of a heap segment), so it is the only producer of its
        // outgoing ring and the only consumer of its incoming ring.
        let producer = unsafe {
            Producer::from_raw(
                out_header,
                out_data,
                out_capacity,
                signals.clone(),
                Arc::clone(&keep),
            )
        }?;
        // SAFETY: as above, for the incoming ring; `keep_in` also holds the role lock for as
        // long as the consumer or any record it holds in place lives.
        let consumer =
            unsafe { Consumer::from_raw(in_header, in_data, in_capacity, signals, keep_in) }?;
        let monitor = PeerMonitor::new(Arc::clone(&segment), role.peer());
        Ok(Link {
            producer,
            consumer,
            control: LinkControl {
                monitor,
                plan,
                attachment,
            },
        })
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.control.role()
    }

    /// The segment's name (`None` for an in-process link).
    pub fn name(&self) -> Option<&SegmentName> {
        self.control.name()
    }

    /// This side's restart epoch.
    pub fn epoch(&self) -> u64 {
        self.control.epoch()
    }

    /// The peer's current restart epoch and pid (0, 0 before it first attached).
    pub fn peer_epoch_and_pid(&self) -> (u64, u32) {
        self.control.peer_epoch_and_pid()
    }

    /// The peer's liveness; a heartbeat still for `stale_after` or longer makes it
    /// [`Liveness::Stale`].
    pub fn peer_liveness(&mut self, stale_after: Duration) -> Liveness {
        self.control.peer_liveness(stale_after)
    }

    /// A snapshot of one side's block in the control block (untrusted values, as read).
    pub fn side(&self, role: Role) -> Option<SideSnapshot> {
        self.control.side(role)
    }

    /// Where the segment's parts lie.
    pub fn plan(&self) -> &SegmentPlan {
        self.control.plan()
    }

    /// Takes the link apart so that its halves can be owned by different threads.
    pub fn into_parts(self) -> LinkParts {
        LinkParts {
            producer: self.producer,
            consumer: self.consumer,
            control: self.control,
        }
    }

    /// The producer half of the outgoing ring.
    pub fn sender(&mut self) -> &mut Producer {
        &mut self.producer
    }

    /// The consumer half of the incoming ring.
    pub fn receiver(&mut self) -> &mut Consumer {
        &mut self.consumer
    }

    /// Both halves at once (to send and receive from one thread in turn, or to move them
    /// into a scoped thread each).
    pub fn split(&mut self) -> (&mut Producer, &mut Consumer) {
        (&mut self.producer, &mut self.consumer)
    }
}

/// The pointers to a ring header and its data region.
fn ring_parts(
    segment: &Segment,
    offset: u64,
    capacity: u64,
) -> (
    std::ptr::NonNull<crate::layout::RingHeader>,
    std::ptr::NonNull<u8>,
) {
    let header = control::ring_header(segment, offset)
        .expect("validated plan places the ring inside the segment");
    let data_offset = usize::try_from(offset + RING_HEADER_LEN as u64).expect("inside the mapping");
    debug_assert!(data_offset as u64 + capacity <= segment.len() as u64);
    // SAFETY: `data_offset + capacity <= segment.len()` (the plan was validated against the
    // mapping length), so the pointer stays inside the mapping.
    let data = unsafe { segment.as_ptr().add(data_offset) };
    (
        std::ptr::NonNull::from(header),
        std::ptr::NonNull::new(data).expect("mapping is non-null"),
    )
}

/// Errors common to both ways of building a link.
#[derive(Debug)]
enum AssembleError {
    Attach(AttachError),
    Ring(RingCorruption),
}

impl From<AttachError> for AssembleError {
    fn from(e: AttachError) -> Self {
        AssembleError::Attach(e)
    }
}

impl From<RingCorruption> for AssembleError {
    fn from(e: RingCorruption) -> Self {
        AssembleError::Ring(e)
    }
}

impl AssembleError {
    fn into_create(self) -> LinkCreateError {
        match self {
            AssembleError::Attach(e) => e.into(),
            AssembleError::Ring(e) => e.into(),
        }
    }

    fn into_attach(self) -> LinkAttachError {
        match self {
            AssembleError::Attach(e) => e.into(),
            AssembleError::Ring(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> CreateOptions {
        CreateOptions::default().ring_capacity(64 * 1024)
    }

    fn unique(tag: &str) -> SegmentName {
        SegmentName::new(format!("shmex.test.link.{tag}.{}", std::process::id())).unwrap()
    }

    fn soon() -> Option<Instant> {
        Some(Instant::now() + Duration::from_secs(10))
    }

    #[test]
    fn in_process_link_carries_both_directions() {
        let (mut exchanger, mut agent) = Link::in_process(&small()).unwrap();
        exchanger.sender().push(b"task", soon()).unwrap();
        let mut buf = Vec::new();
        agent.receiver().pop_into(&mut buf, soon()).unwrap();
        assert_eq!(buf, b"task");
        agent.sender().push(b"result", soon()).unwrap();
        exchanger.receiver().pop_into(&mut buf, soon()).unwrap();
        assert_eq!(buf, b"result");
        assert_eq!(
            exchanger.peer_liveness(Duration::from_secs(60)),
            Liveness::Alive
        );
    }

    #[test]
    fn attach_refuses_a_segment_whose_ring_is_below_the_link_minimum() {
        // A creator that did not check (another build, a tool) made a 128-byte task ring.
        let name = unique("tiny-ring");
        let plan = SegmentPlan::new(128, MIN_RING_CAPACITY).unwrap();
        let segment = Segment::create(&name, plan.segment_len, true, false).unwrap();
        control::initialize(&segment, &plan);
        let options = AttachOptions {
            attach_timeout: Duration::ZERO,
            ..AttachOptions::default()
        };
        let got = Link::attach(&name, &options);
        segment.unlink().unwrap();
        assert!(matches!(
            got,
            Err(LinkAttachError::RingTooSmall {
                ring: "task",
                capacity: 128,
                min: MIN_RING_CAPACITY,
            })
        ));
    }

    #[test]
    fn attach_refuses_a_symlink_planted_at_the_name() {
        let real = unique("symlink-real");
        let planted = unique("symlink-planted");
        let exchanger = Link::create(&real, &small()).unwrap();
        let link_path = format!("/dev/shm/{}", planted.as_str());
        let _ = std::fs::remove_file(&link_path);
        std::os::unix::fs::symlink(format!("/dev/shm/{}", real.as_str()), &link_path).unwrap();
        let options = AttachOptions {
            attach_timeout: Duration::ZERO,
            ..AttachOptions::default()
        };
        let got = Link::attach(&planted, &options);
        let _ = std::fs::remove_file(&link_path);
        drop(exchanger);
        assert!(
            matches!(
                got,
                Err(LinkAttachError::Open(OpenError::SymlinkRefused { .. }))
            ),
            "{got:?}"
        );
    }

    #[test]
    fn invalid_capacity_is_a_typed_error() {
        assert!(matches!(
            Link::in_process(&CreateOptions::default().ring_capacity(0)),
            Err(LinkCreateError::Capacity { ring: "task", .. })
        ));
        assert!(matches!(
            Link::in_process(&CreateOptions::default().ring_capacity(1000)),
            Err(LinkCreateError::Capacity { .. })
        ));
    }

    #[test]
    fn named_link_attach_send_and_cleanup() {
        let name = unique("named");
        let mut exchanger = Link::create(&name, &small()).unwrap();
        let mut agent = Link::attach(&name, &AttachOptions::default()).unwrap();
        assert_eq!(agent.role(), Role::Agent);
        assert_eq!(exchanger.peer_epoch_and_pid(), (1, std::process::id()));
        // A second agent is refused while the first lives.
        assert!(matches!(
            Link::attach(&name, &AttachOptions::default()),
            Err(LinkAttachError::Attach(AttachError::RoleTaken { .. }))
        ));
        exchanger.sender().push(&[7; 1000], soon()).unwrap();
        let mut buf = Vec::new();
        agent.receiver().pop_into(&mut buf, soon()).unwrap();
        assert_eq!(buf, vec![7; 1000]);
        drop(agent);
        assert_eq!(
            exchanger.peer_liveness(Duration::from_secs(60)),
            Liveness::Closed
        );
        // A restarted agent gets a new epoch.
        let agent = Link::attach(&name, &AttachOptions::default()).unwrap();
        assert_eq!(agent.epoch(), 2);
        drop(exchanger);
        assert_eq!(
            segment::owner_lock_held(&name).unwrap(),
            None,
            "owner unlinks on drop"
        );
    }

    #[test]
    fn attach_times_out_without_exchanger() {
        let options = AttachOptions {
            attach_timeout: Duration::from_millis(20),
            ..AttachOptions::default()
        };
        match Link::attach(&unique("absent"), &options) {
            Err(LinkAttachError::Timeout { last_seen, .. }) => {
                assert_eq!(last_seen, AttachWait::NoSegment)
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn blocked_receive_reports_closed_peer() {
        let (exchanger, mut agent) = Link::in_process(&small()).unwrap();
        drop(exchanger);
        let mut buf = Vec::new();
        assert!(matches!(
            agent.receiver().pop_into(&mut buf, soon()),
            Err(ring::RecvError::PeerLost(signal::PeerLost::Closed))
        ));
    }
}
