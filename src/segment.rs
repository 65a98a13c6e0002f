//! Named shared-memory segments: validated names, create (exclusive, mode 0600, space reserved
//! up front), open, reclaim of a segment whose owner died, unlink; and heap-backed segments
//! with the same interface, so ring, control and link logic run in one process without
//! `/dev/shm`.
//!
//! Ownership is decided by the operating system, not by pids: the creator holds an OFD write
//! lock on byte `OWNER_LOCK_BYTE` of the segment for as long as it has the segment open. A
//! segment whose owner lock can be taken has a dead owner and may be reclaimed; one whose lock
//! is held is never touched. Every unlink by name first checks that the name still refers to
//! the object in hand, so a process never removes a segment another process created since.

use std::fmt;
use std::os::fd::OwnedFd;
use std::time::Duration;

use crate::layout::{OWNER_LOCK_BYTE, PAGE};
use crate::sys::{self, LockAttempt, SharedMap, SysError};

/// Prefix of every segment name, so that `shmex list` and `shmex clean` find ours and only ours.
pub const NAME_PREFIX: &str = "shmex.";

/// Longest segment name accepted (the file name in `/dev/shm`).
pub const MAX_NAME_LEN: usize = 200;

/// A validated segment name: `shmex.` followed by 1 or more characters from `[A-Za-z0-9._-]`,
/// at most [`MAX_NAME_LEN`] bytes in all, with no `..`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SegmentName(String);

/// Why a string is not a valid [`SegmentName`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name does not start with [`NAME_PREFIX`].
    #[error("segment name {name:?} must start with {NAME_PREFIX:?}")]
    MissingPrefix {
        /// The rejected name.
        name: String,
    },
    /// Nothing follows the prefix.
    #[error("segment name {name:?} has nothing after the {NAME_PREFIX:?} prefix")]
    Empty {
        /// The rejected name.
        name: String,
    },
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("segment name is {len} bytes, at most {MAX_NAME_LEN} allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The name holds a character outside `[A-Za-z0-9._-]`.
    #[error(
        "segment name {name:?} holds {found:?}; only letters, digits, '.', '_' and '-' are allowed"
    )]
    BadCharacter {
        /// The rejected name.
        name: String,
        /// The first offending character.
        found: char,
    },
    /// The name holds `..`.
    #[error("segment name {name:?} holds \"..\"")]
    DotDot {
        /// The rejected name.
        name: String,
    },
    /// [`SegmentName::for_agent`] was given an empty site name.
    #[error("the site name of a link must not be empty")]
    EmptySite,
    /// [`SegmentName::for_agent`] was given an empty agent id.
    #[error("the agent id of a link must not be empty")]
    EmptyAgentId,
    /// [`SegmentName::for_agent`] was given a site name holding `.`, which would make the
    /// boundary between site and agent id ambiguous.
    #[error(
        "the site name of a link holds '.' at byte {index}; '.' is allowed only in the agent id"
    )]
    DotInSite {
        /// Byte index of the first `.` in the site name.
        index: usize,
    },
}

impl SegmentName {
    /// Validates a full segment name such as `shmex.site-1.agent-7`.
    pub fn new(name: impl Into<String>) -> Result<SegmentName, NameError> {
        let name = name.into();
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong { len: name.len() });
        }
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
            return Err(NameError::MissingPrefix { name });
        };
        if rest.is_empty() {
            return Err(NameError::Empty { name });
        }
        if let Some(found) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(NameError::BadCharacter { name, found });
        }
        if name.contains("..") {
            return Err(NameError::DotDot { name });
        }
        Ok(SegmentName(name))
    }

    /// The name of the link between a site and one of its agents: `shmex.<site>.<agent_id>`
    /// (FLARE names the agent `<site>.-<agent_id>`; ours is the same pair, validated).
    ///
    /// The scheme is injective: the site name may not hold `.` ([`NameError::DotInSite`]),
    /// so the first `.` after the prefix always ends the site, and two different
    /// `(site, agent_id)` pairs never name the same link. The agent id may hold `.` (not
    /// `..`). Both parts must be non-empty ([`NameError::EmptySite`],
    /// [`NameError::EmptyAgentId`]) and use only `[A-Za-z0-9._-]`; the whole name is
    /// checked as by [`SegmentName::new`] (at most [`MAX_NAME_LEN`] bytes).
    pub fn for_agent(site: &str, agent_id: &str) -> Result<SegmentName, NameError> {
        if site.is_empty() {
            return Err(NameError::EmptySite);
        }
        if agent_id.is_empty() {
            return Err(NameError::EmptyAgentId);
        }
        if let Some(index) = site.find('.') {
            return Err(NameError::DotInSite { index });
        }
        SegmentName::new(format!("{NAME_PREFIX}{site}.{agent_id}"))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a segment could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// A segment of this name exists and its owner is alive.
    #[error("segment {name} is in use by a live owner")]
    InUse {
        /// The segment's name.
        name: SegmentName,
    },
    /// A segment of this name exists, and reclaiming stale segments was not asked for.
    #[error("segment {name} exists (its owner is dead; reclaim was not enabled)")]
    Exists {
        /// The segment's name.
        name: SegmentName,
    },
    /// Other processes kept creating or reclaiming the same name while we tried.
    #[error("segment {name}: another process raced us for the name {attempts} times")]
    Contended {
        /// The segment's name.
        name: SegmentName,
        /// Attempts made.
        attempts: u32,
    },
    /// `/dev/shm` (or memory) cannot hold the segment.
    #[error("no space for segment {name} ({bytes} bytes): {source}")]
    NoSpace {
        /// The segment's name.
        name: SegmentName,
        /// Bytes asked for.
        bytes: u64,
        /// The OS error.
        source: SysError,
    },
    /// Another OS call failed.
    #[error("segment {name}: {source}")]
    Sys {
        /// The segment's name.
        name: SegmentName,
        /// The OS error.
        source: SysError,
    },
}

/// Why a segment could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No segment of this name exists.
    #[error("no segment named {name}")]
    NotFound {
        /// The segment's name.
        name: SegmentName,
    },
    /// The segment is smaller than a control block or larger than this process can map.
    #[error("segment {name} is {len} bytes, which cannot hold a shmex layout")]
    BadLength {
        /// The segment's name.
        name: SegmentName,
        /// Its length in bytes.
        len: u64,
    },
    /// The name is a symbolic link: refused, never followed (someone may have planted it to
    /// redirect us to another object).
    #[error("segment {name} is a symbolic link; refused")]
    SymlinkRefused {
        /// The segment's name.
        name: SegmentName,
    },
    /// The segment belongs to another user: it was not made by an exchanger of ours.
    #[error("segment {name} belongs to uid {owner_uid}, not to us (uid {our_uid})")]
    NotOwner {
        /// The segment's name.
        name: SegmentName,
        /// The uid owning the segment.
        owner_uid: u32,
        /// Our effective uid.
        our_uid: u32,
    },
    /// An OS call failed.
    #[error("segment {name}: {source}")]
    Sys {
        /// The segment's name.
        name: SegmentName,
        /// The OS error.
        source: SysError,
    },
}

/// Refuses a segment owned by a uid other than ours: `Err((owner_uid, our_uid))`.
fn check_owner(owner_uid: u32, our_uid: u32) -> Result<(), (u32, u32)> {
    if owner_uid == our_uid {
        Ok(())
    } else {
        Err((owner_uid, our_uid))
    }
}

/// What backs a segment's bytes.
enum Backing {
    /// A named POSIX shared-memory object, with the descriptor that carries our locks.
    Shared { fd: OwnedFd, map: SharedMap },
    /// Zeroed, page-aligned heap memory (in-process links, tests).
    Heap {
        ptr: std::ptr::NonNull<u8>,
        len: usize,
    },
}

/// A mapped segment: a named shared-memory object or heap memory.
///
/// Bytes in a segment are only ever accessed through atomics or through ring grants (see
/// DESIGN §3); this type hands out the base pointer and the length, never references.
pub struct Segment {
    name: Option<SegmentName>,
    backing: Backing,
}

// SAFETY: `Segment` owns its mapping (or heap block) and descriptor; the raw pointer inside is
// only an address of memory that stays valid until drop, and all access to the bytes goes
// through atomics or grants whose exclusivity the ring protocol ensures.
unsafe impl Send for Segment {}
// SAFETY: as for `Send`: shared access hands out the address only.
unsafe impl Sync for Segment {}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.name)
            .field("len", &self.len())
            .field("shared", &matches!(self.backing, Backing::Shared { .. }))
            .finish()
    }
}

/// How many times `create` retries when other processes race it for the same name.
const CREATE_ATTEMPTS: u32 = 8;

impl Segment {
    /// Creates a named segment of `len` bytes: exclusive, mode 0600, pages reserved now (a full
    /// `/dev/shm` yields [`CreateError::NoSpace`] here, never SIGBUS later), mapped and, with
    /// `populate`, pre-faulted. The returned segment holds the exchanger's owner lock.
    ///
    /// If the name exists: with `reclaim_stale`, a segment whose owner is dead is unlinked and
    /// replaced; a live owner's segment yields [`CreateError::InUse`] and is left untouched.
    pub fn create(
        name: &SegmentName,
        len: u64,
        reclaim_stale: bool,
        populate: bool,
    ) -> Result<Segment, CreateError> {
        let sys_err = |source: SysError| CreateError::Sys {
            name: name.clone(),
            source,
        };
        for _ in 0..CREATE_ATTEMPTS {
            let fd = match sys::shm_create_exclusive(name.as_str()) {
                Ok(fd) => fd,
                Err(SysError::AlreadyExists { .. }) => {
                    if !reclaim_stale {
                        return match owner_lock_held(name).map_err(sys_err)? {
                            Some(true) => Err(CreateError::InUse { name: name.clone() }),
                            _ => Err(CreateError::Exists { name: name.clone() }),
                        };
                    }
                    match reclaim(name).map_err(sys_err)? {
                        Reclaim::OwnerAlive => {
                            return Err(CreateError::InUse { name: name.clone() })
                        }
                        Reclaim::Removed | Reclaim::Vanished => continue,
                    }
                }
                Err(e) => return Err(sys_err(e)),
            };
            // The owner lock is taken before the segment has a size, so a reclaimer can never
            // see a live creator's segment as ownerless once this succeeds.
            match sys::try_lock_byte(&fd, OWNER_LOCK_BYTE).map_err(sys_err)? {
                LockAttempt::Acquired => {}
                LockAttempt::HeldElsewhere => {
                    // A reclaimer took our fresh object's lock in the instant before we did and
                    // will unlink it: start over with a new object.
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            }
            // A reclaimer may have locked, unlinked and let go of our object between our
            // create and our lock; then our lock is on an object without a name. Only an
            // object the name still refers to is ours to use.
            if !names_this_object(name.as_str(), &fd).map_err(sys_err)? {
                continue;
            }
            // From here on a failure removes the half-made segment before reporting.
            let fail = |e: SysError| {
                let _ = unlink_if_ours(name.as_str(), &fd);
                match e {
                    SysError::NoSpace { .. } => CreateError::NoSpace {
                        name: name.clone(),
                        bytes: len,
                        source: e,
                    },
                    e => sys_err(e),
                }
            };
            sys::reserve(&fd, len).map_err(fail)?;
            let map = SharedMap::new(&fd, len, populate).map_err(fail)?;
            return Ok(Segment {
                name: Some(name.clone()),
                backing: Backing::Shared { fd, map },
            });
        }
        Err(CreateError::Contended {
            name: name.clone(),
            attempts: CREATE_ATTEMPTS,
        })
    }

    /// Opens and maps an existing named segment (whole file). Its contents are not validated
    /// here; see `control::validate`.
    ///
    /// A symbolic link at the name is refused, not followed ([`OpenError::SymlinkRefused`]),
    /// and so is a segment owned by another user ([`OpenError::NotOwner`]).
    pub fn open(name: &SegmentName, populate: bool) -> Result<Segment, OpenError> {
        let sys_err = |source: SysError| match source {
            SysError::NotFound { .. } => OpenError::NotFound { name: name.clone() },
            SysError::SymlinkRefused { .. } => OpenError::SymlinkRefused { name: name.clone() },
            source => OpenError::Sys {
                name: name.clone(),
                source,
            },
        };
        let fd = sys::shm_open_existing(name.as_str()).map_err(sys_err)?;
        let owner_uid = sys::file_owner_uid(&fd).map_err(sys_err)?;
        check_owner(owner_uid, sys::effective_uid()).map_err(|(owner_uid, our_uid)| {
            OpenError::NotOwner {
                name: name.clone(),
                owner_uid,
                our_uid,
            }
        })?;
        let len = sys::file_len(&fd).map_err(sys_err)?;
        if len < PAGE as u64 || usize::try_from(len).is_err() {
            return Err(OpenError::BadLength {
                name: name.clone(),
                len,
            });
        }
        let map = SharedMap::new(&fd, len, populate).map_err(sys_err)?;
        Ok(Segment {
            name: Some(name.clone()),
            backing: Backing::Shared { fd, map },
        })
    }

    /// A zeroed, page-aligned heap segment of `len` bytes (no name, no OS locks).
    ///
    /// # Panics
    /// If `len` is zero or does not fit the address space; allocation failure aborts.
    pub fn heap(len: usize) -> Segment {
        assert!(len > 0, "a heap segment needs at least one byte");
        let layout = std::alloc::Layout::from_size_align(len, PAGE).expect("segment too large");
        // SAFETY: `layout` has a non-zero size (asserted above).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Segment {
            name: None,
            backing: Backing::Heap { ptr, len },
        }
    }

    /// The segment's name; `None` for a heap segment.
    pub fn name(&self) -> Option<&SegmentName> {
        self.name.as_ref()
    }

    /// Start of the segment (page-aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        match &self.backing {
            Backing::Shared { map, .. } => map.as_ptr(),
            Backing::Heap { ptr, .. } => ptr.as_ptr(),
        }
    }

    /// Length of the segment in bytes.
    pub fn len(&self) -> usize {
        match &self.backing {
            Backing::Shared { map, .. } => map.len(),
            Backing::Heap { len, .. } => *len,
        }
    }

    /// Whether the segment has no bytes (never true for a segment this module made).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The descriptor carrying this process's locks; `None` for a heap segment.
    pub fn fd(&self) -> Option<&OwnedFd> {
        match &self.backing {
            Backing::Shared { fd, .. } => Some(fd),
            Backing::Heap { .. } => None,
        }
    }

    /// Length of the underlying file now (it may differ from the mapping if a third process
    /// truncated it); the mapping length for a heap segment.
    pub fn file_len(&self) -> Result<u64, SysError> {
        match &self.backing {
            Backing::Shared { fd, .. } => sys::file_len(fd),
            Backing::Heap { len, .. } => Ok(*len as u64),
        }
    }

    /// Removes the segment's name from `/dev/shm` if it still refers to this segment (not to
    /// one another process created under the same name since); mappings stay valid. A no-op for
    /// heap segments; a name that is already gone is not an error.
    pub fn unlink(&self) -> Result<(), SysError> {
        match (&self.name, &self.backing) {
            (Some(name), Backing::Shared { fd, .. }) => {
                unlink_if_ours(name.as_str(), fd).map(|_| ())
            }
            _ => Ok(()),
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let Backing::Heap { ptr, len } = self.backing {
            let layout = std::alloc::Layout::from_size_align(len, PAGE)
                .expect("layout was valid at allocation");
            // SAFETY: `ptr` came from `alloc_zeroed` with this same layout and is freed once.
            unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
        }
    }
}

/// What [`reclaim`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reclaim {
    /// The owner is alive: the segment was left alone.
    OwnerAlive,
    /// The owner was dead: the name was unlinked.
    Removed,
    /// No segment of that name existed.
    Vanished,
}

/// Removes the segment `name` if its owner (the exchanger) is dead; never touches a segment
/// whose owner lock is held.
///
/// Races are settled by the lock itself: the reclaimer takes the owner lock before it unlinks,
/// so two reclaimers, or a reclaimer and a starting owner, cannot both win.
pub fn reclaim(name: &SegmentName) -> Result<Reclaim, SysError> {
    let fd = match sys::shm_open_existing(name.as_str()) {
        Ok(fd) => fd,
        Err(SysError::NotFound { .. }) => return Ok(Reclaim::Vanished),
        Err(e) => return Err(e),
    };
    match sys::try_lock_byte(&fd, OWNER_LOCK_BYTE)? {
        LockAttempt::HeldElsewhere => Ok(Reclaim::OwnerAlive),
        LockAttempt::Acquired => {
            // The name may have been reclaimed and re-created by another process since we
            // opened it: unlink only if it still names the object whose lock we hold.
            Ok(if unlink_if_ours(name.as_str(), &fd)? {
                Reclaim::Removed
            } else {
                Reclaim::Vanished
            })
        }
    }
}

/// Whether the name `name` refers to the object open as `fd` (same device and inode).
fn names_this_object(name: &str, fd: &OwnedFd) -> Result<bool, SysError> {
    match sys::shm_open_existing(name) {
        Ok(current) => Ok(sys::file_identity(&current)? == sys::file_identity(fd)?),
        Err(SysError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes the name `name` if it refers to the object open as `fd`; `Ok(false)` if it names
/// another object or nothing (left alone).
fn unlink_if_ours(name: &str, fd: &OwnedFd) -> Result<bool, SysError> {
    if !names_this_object(name, fd)? {
        return Ok(false);
    }
    match sys::shm_unlink(name) {
        Ok(()) => Ok(true),
        Err(SysError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the owner lock of segment `name` is held: `None` if there is no such segment.
pub fn owner_lock_held(name: &SegmentName) -> Result<Option<bool>, SysError> {
    let fd = match sys::shm_open_existing(name.as_str()) {
        Ok(fd) => fd,
        Err(SysError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    sys::byte_locked_elsewhere(&fd, OWNER_LOCK_BYTE).map(Some)
}

/// Names of every shmex segment on this host (entries of `/dev/shm` with [`NAME_PREFIX`]).
pub fn list_names() -> std::io::Result<Vec<SegmentName>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir("/dev/shm")? {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str() {
            if let Ok(name) = SegmentName::new(name) {
                names.push(name);
            }
        }
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unique(tag: &str) -> SegmentName {
        SegmentName::new(format!("shmex.test.segment.{tag}.{}", std::process::id())).unwrap()
    }

    #[test]
    fn names_are_validated() {
        assert!(SegmentName::new("shmex.site-1.agent_7").is_ok());
        assert_eq!(
            SegmentName::for_agent("site", "a1").unwrap().as_str(),
            "shmex.site.a1"
        );
        assert!(matches!(
            SegmentName::new("other.x"),
            Err(NameError::MissingPrefix { .. })
        ));
        assert!(matches!(
            SegmentName::new("shmex."),
            Err(NameError::Empty { .. })
        ));
        assert!(matches!(
            SegmentName::new("shmex.a/b"),
            Err(NameError::BadCharacter { found: '/', .. })
        ));
        assert!(matches!(
            SegmentName::new("shmex.a..b"),
            Err(NameError::DotDot { .. })
        ));
        assert!(matches!(
            SegmentName::new(format!("shmex.{}", "x".repeat(MAX_NAME_LEN))),
            Err(NameError::TooLong { .. })
        ));
        assert!(matches!(
            SegmentName::new("shmex.ä"),
            Err(NameError::BadCharacter { found: 'ä', .. })
        ));
    }

    #[test]
    fn different_site_agent_pairs_never_share_a_name_and_empty_parts_are_refused() {
        // Before the fix both pairs gave `shmex.site-1.a.b`.
        let first = SegmentName::for_agent("site-1.a", "b");
        let second = SegmentName::for_agent("site-1", "a.b");
        assert!(
            !matches!((&first, &second), (Ok(a), Ok(b)) if a == b),
            "two pairs share a link: {first:?} {second:?}"
        );
        assert!(matches!(
            second,
            Ok(ref name) if name.as_str() == "shmex.site-1.a.b"
        ));
        assert!(matches!(first, Err(NameError::DotInSite { index: 6 })));
        assert!(matches!(
            SegmentName::for_agent("site", ""),
            Err(NameError::EmptyAgentId)
        ));
        assert!(matches!(
            SegmentName::for_agent("", "agent"),
            Err(NameError::EmptySite)
        ));
        // A leading dot in the agent id would form `..`: refused, not a different site.
        assert!(matches!(
            SegmentName::for_agent("site", ".x"),
            Err(NameError::DotDot { .. })
        ));
        // Dots stay allowed in the agent id, where they cannot move the boundary.
        assert_eq!(
            SegmentName::for_agent("site-1", "a.b").unwrap().as_str(),
            "shmex.site-1.a.b"
        );
    }

    #[test]
    fn live_owner_is_refused_and_dead_owner_reclaimed() {
        let name = unique("reclaim");
        let first = Segment::create(&name, 8192, true, false).unwrap();
        assert!(matches!(
            Segment::create(&name, 8192, true, false),
            Err(CreateError::InUse { .. })
        ));
        assert_eq!(reclaim(&name).unwrap(), Reclaim::OwnerAlive);
        assert_eq!(owner_lock_held(&name).unwrap(), Some(true));
        // Dropping the segment closes its descriptor: the owner lock goes, the name stays.
        drop(first);
        assert_eq!(owner_lock_held(&name).unwrap(), Some(false));
        assert!(matches!(
            Segment::create(&name, 8192, false, false),
            Err(CreateError::Exists { .. })
        ));
        let second = Segment::create(&name, 16384, true, false).unwrap();
        assert_eq!(second.len(), 16384);
        second.unlink().unwrap();
        assert_eq!(owner_lock_held(&name).unwrap(), None);
        assert_eq!(reclaim(&name).unwrap(), Reclaim::Vanished);
    }

    #[test]
    fn a_segment_larger_than_dev_shm_fails_at_create_with_no_space_and_leaves_nothing() {
        let name = unique("nospace");
        // 4 TiB: far more than any /dev/shm here; fallocate refuses it up front.
        match Segment::create(&name, 4 << 40, true, false) {
            Err(CreateError::NoSpace { bytes, .. }) => assert_eq!(bytes, 4 << 40),
            other => panic!("expected NoSpace, got {other:?}"),
        }
        assert_eq!(
            owner_lock_held(&name).unwrap(),
            None,
            "the failed segment was removed"
        );
    }

    #[test]
    fn open_maps_the_same_bytes() {
        let name = unique("open");
        let created = Segment::create(&name, 8192, true, true).unwrap();
        let opened = Segment::open(&name, false).unwrap();
        created.unlink().unwrap();
        assert_eq!(opened.len(), 8192);
        // SAFETY: both maps are 8192 bytes and alive; no references are formed.
        unsafe { created.as_ptr().wrapping_add(5000).write_volatile(7) };
        // SAFETY: as above.
        let seen = unsafe { opened.as_ptr().wrapping_add(5000).read_volatile() };
        assert_eq!(seen, 7);
    }

    #[test]
    fn a_symlink_planted_at_a_segment_name_is_refused_not_followed() {
        let target = unique("symlink-target");
        let planted = unique("symlink-planted");
        let created = Segment::create(&target, 8192, true, false).unwrap();
        let link_path = format!("/dev/shm/{}", planted.as_str());
        let _ = std::fs::remove_file(&link_path);
        std::os::unix::fs::symlink(format!("/dev/shm/{}", target.as_str()), &link_path).unwrap();
        let opened = Segment::open(&planted, false);
        let probed = owner_lock_held(&planted);
        let _ = std::fs::remove_file(&link_path);
        created.unlink().unwrap();
        assert!(
            matches!(opened, Err(OpenError::SymlinkRefused { ref name }) if *name == planted),
            "the symlink was followed: {opened:?}"
        );
        assert!(
            matches!(probed, Err(SysError::SymlinkRefused { .. })),
            "the symlink was followed: {probed:?}"
        );
    }

    #[test]
    fn a_segment_of_another_uid_is_refused_and_ours_accepted() {
        assert_eq!(check_owner(1000, 1000), Ok(()));
        assert_eq!(check_owner(0, 1000), Err((0, 1000)));
        assert_eq!(check_owner(1000, 0), Err((1000, 0)));
        // A real segment is ours.
        let name = unique("owner");
        let created = Segment::create(&name, 8192, true, false).unwrap();
        let opened = Segment::open(&name, false);
        created.unlink().unwrap();
        assert!(opened.is_ok(), "{opened:?}");
    }

    #[test]
    fn open_missing_is_not_found() {
        assert!(matches!(
            Segment::open(&unique("missing"), false),
            Err(OpenError::NotFound { .. })
        ));
    }

    #[test]
    fn heap_segment_is_zeroed_and_aligned() {
        let seg = Segment::heap(3 * PAGE);
        assert_eq!(seg.as_ptr() as usize % PAGE, 0);
        assert!(seg.fd().is_none());
        // SAFETY: index < len; no references are formed.
        assert_eq!(unsafe { seg.as_ptr().wrapping_add(2 * PAGE + 5).read() }, 0);
    }
}
