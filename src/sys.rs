//! The only module that calls the operating system.
//!
//! Everything above gets typed, safe wrappers: POSIX shared-memory objects (open, create with
//! `O_EXCL` and mode 0600, reserve, unlink), memory maps, shared futex wait/wake, and open file
//! description (OFD) byte-range locks, which shmex uses as its OS-backed liveness signal: a
//! lock held through an open file description disappears when the process holding it dies,
//! SIGKILL included, so a peer can ask the kernel instead of waiting for a heartbeat to go
//! stale.
//!
//! Linux is the first target. Elsewhere futexes fall back to polling (see `signal`), and the
//! lock calls use classic POSIX record locks where OFD locks do not exist.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::shm;

/// An OS call that failed, with the call's name and its errno mapped to what it means for us.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// The object exists already (`EEXIST`).
    #[error("{call}: already exists")]
    AlreadyExists {
        /// The failing call.
        call: &'static str,
    },
    /// No such object (`ENOENT`).
    #[error("{call}: no such shared-memory object")]
    NotFound {
        /// The failing call.
        call: &'static str,
    },
    /// Permission denied (`EACCES`, `EPERM`).
    #[error("{call}: permission denied")]
    PermissionDenied {
        /// The failing call.
        call: &'static str,
    },
    /// No space left on the shared-memory file system, or no memory (`ENOSPC`, `ENOMEM`,
    /// `EFBIG`).
    #[error("{call}: no space for {bytes} bytes of shared memory")]
    NoSpace {
        /// The failing call.
        call: &'static str,
        /// Bytes asked for.
        bytes: u64,
    },
    /// The name is a symbolic link, which shmex never follows (`ELOOP` from an
    /// `O_NOFOLLOW` open): someone planted it to redirect us to another object.
    #[error("{call}: the name is a symbolic link (refused, not followed)")]
    SymlinkRefused {
        /// The failing call.
        call: &'static str,
    },
    /// Any other errno, kept raw.
    #[error("{call}: {source}")]
    Os {
        /// The failing call.
        call: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

impl SysError {
    fn from_errno(call: &'static str, errno: Errno, bytes: u64) -> SysError {
        match errno {
            Errno::EXIST => SysError::AlreadyExists { call },
            Errno::NOENT => SysError::NotFound { call },
            Errno::ACCESS | Errno::PERM => SysError::PermissionDenied { call },
            Errno::NOSPC | Errno::NOMEM | Errno::FBIG => SysError::NoSpace { call, bytes },
            Errno::LOOP => SysError::SymlinkRefused { call },
            other => SysError::Os {
                call,
                source: io::Error::from_raw_os_error(other.raw_os_error()),
            },
        }
    }
}

/// The path argument for `shm_open`: the validated name with its leading slash.
fn shm_path(name: &str) -> String {
    format!("/{name}")
}

/// Creates a new shared-memory object, failing if it exists (`O_CREAT | O_EXCL`, mode 0600).
pub fn shm_create_exclusive(name: &str) -> Result<OwnedFd, SysError> {
    shm::open(
        shm_path(name).as_str(),
        shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR,
        Mode::RUSR | Mode::WUSR,
    )
    .map_err(|e| SysError::from_errno("shm_open(O_CREAT|O_EXCL)", e, 0))
}

/// Opens an existing shared-memory object for reading and writing, never through a symbolic
/// link: a link planted at the name yields [`SysError::SymlinkRefused`].
///
/// On Linux this opens `/dev/shm/<name>` with `O_NOFOLLOW | O_CLOEXEC` (rustix's `shm::open`
/// is a plain open there, without `O_NOFOLLOW`). Elsewhere it is `shm_open`, whose objects
/// are not files a third party can replace with a link on the systems we know.
#[cfg(target_os = "linux")]
pub fn shm_open_existing(name: &str) -> Result<OwnedFd, SysError> {
    use rustix::fs::OFlags;
    rustix::fs::open(
        format!("/dev/shm/{name}").as_str(),
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SysError::from_errno("open(/dev/shm, O_NOFOLLOW)", e, 0))
}

/// Opens an existing shared-memory object for reading and writing (portable fallback).
#[cfg(not(target_os = "linux"))]
pub fn shm_open_existing(name: &str) -> Result<OwnedFd, SysError> {
    shm::open(shm_path(name).as_str(), shm::OFlags::RDWR, Mode::empty())
        .map_err(|e| SysError::from_errno("shm_open", e, 0))
}

/// Removes a shared-memory object's name. Processes that have it mapped keep their mapping.
pub fn shm_unlink(name: &str) -> Result<(), SysError> {
    shm::unlink(shm_path(name).as_str()).map_err(|e| SysError::from_errno("shm_unlink", e, 0))
}

/// Sizes a fresh shared-memory object to `len` bytes and reserves its pages now, so that a full
/// `/dev/shm` fails here with [`SysError::NoSpace`] rather than with SIGBUS on first touch.
pub fn reserve(fd: &OwnedFd, len: u64) -> Result<(), SysError> {
    rustix::fs::ftruncate(fd, len).map_err(|e| SysError::from_errno("ftruncate", e, len))?;
    #[cfg(target_os = "linux")]
    {
        match rustix::fs::fallocate(fd, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => {}
            // A file system without fallocate: the size is set; pages come on first touch.
            Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => {}
            Err(e) => return Err(SysError::from_errno("fallocate", e, len)),
        }
    }
    Ok(())
}

/// The current length of a file in bytes.
pub fn file_len(fd: &OwnedFd) -> Result<u64, SysError> {
    let stat = rustix::fs::fstat(fd).map_err(|e| SysError::from_errno("fstat", e, 0))?;
    Ok(u64::try_from(stat.st_size).unwrap_or(0))
}

/// The user id owning an open file.
pub fn file_owner_uid(fd: &OwnedFd) -> Result<u32, SysError> {
    let stat = rustix::fs::fstat(fd).map_err(|e| SysError::from_errno("fstat", e, 0))?;
    Ok(stat.st_uid)
}

/// This process's effective user id.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Identity of an open file (device and inode): two descriptors with the same identity refer
/// to the same shared-memory object, even if its name was replaced in between.
pub fn file_identity(fd: &OwnedFd) -> Result<(u64, u64), SysError> {
    let stat = rustix::fs::fstat(fd).map_err(|e| SysError::from_errno("fstat", e, 0))?;
    Ok((stat.st_dev, stat.st_ino))
}

/// A shared read-write memory map of a whole file.
///
/// The mapping stays valid while this value lives, whatever happens to the file's name.
pub struct SharedMap {
    map: memmap2::MmapRaw,
}

impl SharedMap {
    /// Maps `len` bytes of `fd` shared and read-write; `populate` pre-faults the pages.
    pub fn new(fd: &OwnedFd, len: u64, populate: bool) -> Result<SharedMap, SysError> {
        let len_usize = usize::try_from(len).map_err(|_| SysError::NoSpace {
            call: "mmap",
            bytes: len,
        })?;
        let mut options = memmap2::MmapOptions::new();
        options.len(len_usize);
        if populate {
            options.populate();
        }
        let map = options
            .map_raw(fd.as_raw_fd())
            .map_err(|e| match e.raw_os_error() {
                Some(code) => SysError::from_errno("mmap", Errno::from_raw_os_error(code), len),
                None => SysError::Os {
                    call: "mmap",
                    source: e,
                },
            })?;
        Ok(SharedMap { map })
    }

    /// Start of the mapping (page-aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }
}

/// The base page size assumed by [`populate_write`] (every supported target's pages are at
/// least this large and a multiple of it, so a 4 KiB-aligned range holds whole pages and
/// touching one byte per 4 KiB reaches every page).
const MIN_PAGE: usize = 4096;

/// A private, anonymous, read-write memory map of `len` bytes, zeroed by the OS on first touch.
///
/// No huge-page advice: on this project's reference VM (THP in `madvise` mode, a balloon
/// device reporting free guest memory to the host in 2 MiB blocks) `MADV_HUGEPAGE` made the
/// first touch of a receive buffer 2–3 × slower, not faster. Our reading, not proven: every
/// huge page needs a free 2 MiB block, the very unit the host has taken back, so each one is
/// refaulted on the host, while 4 KiB pages also come from smaller free blocks it still backs.
pub fn map_anonymous(len: usize) -> io::Result<memmap2::MmapMut> {
    memmap2::MmapMut::map_anon(len)
}

/// Faults in (allocates and zeroes) every page under `bytes` now, in one batch, so that
/// writing them later takes no page faults, and keeps the bytes: `MADV_POPULATE_WRITE`
/// (Linux ≥ 5.14) on the whole pages inside `bytes`, a write of each byte back to itself at
/// the edges, and elsewhere (or on an older kernel) such a write every 4 KiB. Fails only when
/// the memory cannot be had.
pub fn populate_write(bytes: &mut [u8]) -> io::Result<()> {
    let start = bytes.as_ptr() as usize;
    let inner_start = start.next_multiple_of(MIN_PAGE) - start;
    let inner_end = (start + bytes.len()) / MIN_PAGE * MIN_PAGE;
    let inner_end = inner_end.saturating_sub(start).max(inner_start);
    let mut touch_from = 0;
    #[cfg(target_os = "linux")]
    if inner_end > inner_start {
        let inner = &mut bytes[inner_start..inner_end];
        // SAFETY: `inner` is page-aligned, whole pages, and exclusively borrowed; populating
        // anonymous or shared memory only allocates its pages: the bytes are kept.
        let populated = unsafe {
            rustix::mm::madvise(
                inner.as_mut_ptr().cast(),
                inner.len(),
                rustix::mm::Advice::LinuxPopulateWrite,
            )
        };
        match populated {
            Ok(()) => {
                touch_back(&mut bytes[..inner_start]);
                touch_from = inner_end;
            }
            // EINVAL: a kernel older than 5.14, without the advice: touch every page.
            Err(Errno::INVAL) => {}
            Err(e) => return Err(io::Error::from_raw_os_error(e.raw_os_error())),
        }
    }
    touch_back(&mut bytes[touch_from..]);
    Ok(())
}

/// Writes one byte of every 4 KiB of `bytes` (and its last byte) back to itself, so that each
/// page under it is faulted in for writing.
fn touch_back(bytes: &mut [u8]) {
    let len = bytes.len();
    let base = bytes.as_mut_ptr();
    for offset in (0..len).step_by(MIN_PAGE).chain(len.checked_sub(1)) {
        let byte = base.wrapping_add(offset);
        // SAFETY: `offset < len`, so `byte` is inside `bytes`, exclusively borrowed; a
        // volatile read is not optimized away.
        let value = unsafe { byte.read_volatile() };
        // SAFETY: as above; writing the same value back changes nothing but faults the page
        // in for writing, and the borrow is exclusive, so it races with nothing.
        unsafe { byte.write_volatile(value) };
    }
}

/// The result of trying to take a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockAttempt {
    /// The lock is now held through this file description.
    Acquired,
    /// Another open file description holds a conflicting lock.
    HeldElsewhere,
}

#[cfg(target_os = "linux")]
const SETLK: libc::c_int = libc::F_OFD_SETLK;
#[cfg(target_os = "linux")]
const GETLK: libc::c_int = libc::F_OFD_GETLK;
#[cfg(not(target_os = "linux"))]
const SETLK: libc::c_int = libc::F_SETLK;
#[cfg(not(target_os = "linux"))]
const GETLK: libc::c_int = libc::F_GETLK;

fn lock_request(kind: libc::c_short, byte: u64) -> libc::flock {
    // SAFETY: `flock` is a plain C struct of integers, for which all-zero is a valid value (and
    // `l_pid` must be 0 for OFD requests).
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    request.l_type = kind;
    request.l_whence = libc::SEEK_SET as libc::c_short;
    request.l_start = byte as libc::off_t;
    request.l_len = 1;
    request
}

fn fcntl_flock(fd: &OwnedFd, cmd: libc::c_int, request: &mut libc::flock) -> Result<(), Errno> {
    // SAFETY: `fd` is an open descriptor for the duration of the call; `request` is a valid,
    // exclusively borrowed `flock` the kernel reads and (for GETLK) writes.
    let rc = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), cmd, request as *mut libc::flock) };
    if rc == -1 {
        Err(Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::IO))
    } else {
        Ok(())
    }
}

/// Tries to take a write lock on one byte of the file through this open file description,
/// without blocking.
pub fn try_lock_byte(fd: &OwnedFd, byte: u64) -> Result<LockAttempt, SysError> {
    let mut request = lock_request(libc::F_WRLCK as libc::c_short, byte);
    match fcntl_flock(fd, SETLK, &mut request) {
        Ok(()) => Ok(LockAttempt::Acquired),
        Err(Errno::AGAIN) | Err(Errno::ACCESS) => Ok(LockAttempt::HeldElsewhere),
        Err(e) => Err(SysError::from_errno("fcntl(F_OFD_SETLK)", e, 0)),
    }
}

/// Releases a lock taken with [`try_lock_byte`] through this file description.
pub fn unlock_byte(fd: &OwnedFd, byte: u64) -> Result<(), SysError> {
    let mut request = lock_request(libc::F_UNLCK as libc::c_short, byte);
    fcntl_flock(fd, SETLK, &mut request).map_err(|e| SysError::from_errno("fcntl(F_UNLCK)", e, 0))
}

/// Whether another open file description holds a lock on `byte` that conflicts with a write
/// lock. A lock held through `fd` itself does not count.
pub fn byte_locked_elsewhere(fd: &OwnedFd, byte: u64) -> Result<bool, SysError> {
    let mut request = lock_request(libc::F_WRLCK as libc::c_short, byte);
    fcntl_flock(fd, GETLK, &mut request)
        .map_err(|e| SysError::from_errno("fcntl(F_OFD_GETLK)", e, 0))?;
    Ok(request.l_type != libc::F_UNLCK as libc::c_short)
}

/// This process's id.
pub fn current_pid() -> u32 {
    std::process::id()
}

/// Whether a process with this id exists (it may be another process that reused the id:
/// informational only; liveness decisions use locks).
pub fn pid_exists(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match rustix::process::Pid::from_raw(raw) {
        Some(pid) => match rustix::process::test_kill_process(pid) {
            Ok(()) => true,
            Err(Errno::PERM) => true,
            Err(_) => false,
        },
        None => false,
    }
}

/// Sleeps while `*word == expected`, at most `timeout` (forever if `None`). Returns early on a
/// wake, a signal, a spurious wake-up, or if the word no longer holds `expected`: callers
/// re-check their condition. Uses a shared (not `FUTEX_PRIVATE`) futex, so wakes cross
/// processes.
#[cfg(target_os = "linux")]
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    use rustix::thread::futex;
    let timespec = timeout.map(|t| rustix::time::Timespec {
        tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    // EAGAIN (value changed), EINTR and ETIMEDOUT all mean "re-check"; nothing else can happen
    // for a valid, aligned word.
    let _ = futex::wait(word, futex::Flags::empty(), expected, timespec.as_ref());
}

/// Wakes every thread sleeping in [`futex_wait`] on `word`, in any process.
#[cfg(target_os = "linux")]
pub fn futex_wake(word: &AtomicU32) {
    use rustix::thread::futex;
    let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
}

/// The CPU the calling thread runs on when its affinity allows that one only (a thread, or a
/// process, pinned to a core); `None` when it may run on several or the affinity is unknown.
#[cfg(target_os = "linux")]
pub fn pinned_cpu() -> Option<usize> {
    let allowed = rustix::thread::sched_getaffinity(None).ok()?;
    (allowed.count() == 1).then(rustix::thread::sched_getcpu)
}

/// Elsewhere the affinity is not read: never known to be pinned.
#[cfg(not(target_os = "linux"))]
pub fn pinned_cpu() -> Option<usize> {
    None
}

/// Milliseconds since the Unix epoch (informational timestamps in the control block).
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unique(tag: &str) -> String {
        format!("shmex.test.sys.{tag}.{}", std::process::id())
    }

    #[test]
    fn create_exclusive_refuses_existing_and_unlink_removes() {
        let name = unique("excl");
        let fd = shm_create_exclusive(&name).unwrap();
        reserve(&fd, 8192).unwrap();
        assert_eq!(file_len(&fd).unwrap(), 8192);
        assert!(matches!(
            shm_create_exclusive(&name),
            Err(SysError::AlreadyExists { .. })
        ));
        shm_unlink(&name).unwrap();
        assert!(matches!(
            shm_open_existing(&name),
            Err(SysError::NotFound { .. })
        ));
    }

    #[test]
    fn ofd_locks_conflict_between_descriptions_in_one_process() {
        let name = unique("lock");
        let first = shm_create_exclusive(&name).unwrap();
        let second = shm_open_existing(&name).unwrap();
        shm_unlink(&name).unwrap();
        assert_eq!(try_lock_byte(&first, 0).unwrap(), LockAttempt::Acquired);
        assert!(byte_locked_elsewhere(&second, 0).unwrap());
        assert!(!byte_locked_elsewhere(&first, 0).unwrap());
        assert!(!byte_locked_elsewhere(&second, 1).unwrap());
        assert_eq!(
            try_lock_byte(&second, 0).unwrap(),
            LockAttempt::HeldElsewhere
        );
        drop(first);
        assert!(!byte_locked_elsewhere(&second, 0).unwrap());
        assert_eq!(try_lock_byte(&second, 0).unwrap(), LockAttempt::Acquired);
    }

    #[test]
    fn map_is_shared_between_descriptions() {
        let name = unique("map");
        let fd = shm_create_exclusive(&name).unwrap();
        reserve(&fd, 4096).unwrap();
        let other = shm_open_existing(&name).unwrap();
        shm_unlink(&name).unwrap();
        let a = SharedMap::new(&fd, 4096, true).unwrap();
        let b = SharedMap::new(&other, 4096, false).unwrap();
        // SAFETY: both maps are 4096 bytes and live for the block; no references are formed.
        unsafe { a.as_ptr().wrapping_add(100).write_volatile(42) };
        // SAFETY: as above.
        let seen = unsafe { b.as_ptr().wrapping_add(100).read_volatile() };
        assert_eq!(seen, 42);
    }

    #[test]
    fn futex_wait_returns_when_value_differs_and_on_timeout() {
        let word = AtomicU32::new(3);
        futex_wait(&word, 4, None);
        futex_wait(&word, 3, Some(Duration::from_millis(1)));
        futex_wake(&word);
    }

    #[test]
    fn populated_anonymous_map_is_zeroed_and_keeps_what_was_written() {
        let mut map = map_anonymous(5 * MIN_PAGE).unwrap();
        assert!(map.iter().all(|&b| b == 0));
        map[5] = 7;
        map[3 * MIN_PAGE] = 9;
        // Unaligned at both ends, then whole, then a part of one page, then nothing.
        populate_write(&mut map[3..3 * MIN_PAGE + 10]).unwrap();
        populate_write(&mut map).unwrap();
        populate_write(&mut map[MIN_PAGE + 1..MIN_PAGE + 2]).unwrap();
        populate_write(&mut map[0..0]).unwrap();
        assert_eq!((map[5], map[3 * MIN_PAGE]), (7, 9));
        assert_eq!(map.iter().filter(|&&b| b != 0).count(), 2);
    }

    #[test]
    fn current_pid_exists() {
        assert!(pid_exists(current_pid()));
        assert!(!pid_exists(0));
    }
}
