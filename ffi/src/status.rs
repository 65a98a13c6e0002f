//! Status codes, the thread-local last-error text, and the guard every entry point runs in
//! (no panic crosses `extern "C"`; after rustls-ffi's `panic.rs`).

use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

use shmex::error::{Coded, ErrorCode};

/// What every function returns. `SHMEX_OK` is 0; each kind of error of the Rust API has its
/// own status with the same number as `shmex::error::ErrorCode` (stable: new kinds get new
/// numbers, a number is never reused); the binding's own statuses start at 100. The text of
/// the last failure on the calling thread is `shmex_last_error_message()`.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum shmex_status {
    /// Success.
    SHMEX_OK = 0,
    /// A deadline or timeout passed (`shmex_agent_get_task`: no task arrived in time).
    SHMEX_TIMEOUT = 1,
    /// The other side closed (said bye, detached), or this object was closed.
    SHMEX_CLOSED = 2,
    /// The other side's process died.
    SHMEX_PEER_DEAD = 3,
    /// Shared memory holds values no shmex process writes.
    SHMEX_CORRUPT = 4,
    /// A message the peer sent is malformed; it was dropped and the link stays usable.
    SHMEX_MALFORMED = 5,
    /// A received message exceeds one of the receiver's limits.
    SHMEX_OVER_LIMIT = 6,
    /// This process could not allocate memory.
    SHMEX_OUT_OF_MEMORY = 7,
    /// A buffer the caller gave is too small.
    SHMEX_BUFFER_TOO_SMALL = 8,
    /// Something to send does not fit (the wire format's field widths, or one ring record).
    SHMEX_TOO_LARGE = 9,
    /// The operation was cancelled by the caller.
    SHMEX_CANCELLED = 10,
    /// A tensor or DXO the caller built is invalid (empty or duplicate names, too many
    /// dimensions, a byte length that does not match shape and dtype).
    SHMEX_INVALID_DATA = 11,
    /// No tensor has the index or name asked for.
    SHMEX_NO_SUCH_TENSOR = 12,
    /// A tensor's dtype is not the one asked for.
    SHMEX_WRONG_DTYPE = 13,
    /// Tensor bytes are not aligned for, or not a whole number of, the element type.
    SHMEX_MISALIGNED = 14,
    /// A bool tensor holds a byte other than 0 or 1.
    SHMEX_INVALID_BOOL = 15,
    /// A call made in the wrong state (fetching a task before answering the last one).
    SHMEX_CALL_STATE = 16,
    /// A segment of this name exists already.
    SHMEX_ALREADY_EXISTS = 17,
    /// No segment of this name exists.
    SHMEX_NOT_FOUND = 18,
    /// The OS refused access, or the segment belongs to someone else.
    SHMEX_PERMISSION_DENIED = 19,
    /// `/dev/shm` or memory cannot hold the segment.
    SHMEX_NO_SPACE = 20,
    /// A site name or agent id is invalid (empty, a '.' in the site, bad characters).
    SHMEX_INVALID_NAME = 21,
    /// The segment was made by another layout or format version.
    SHMEX_VERSION_MISMATCH = 22,
    /// The role (or the name) is held by another live process.
    SHMEX_IN_USE = 23,
    /// An option is invalid (a ring capacity, a negative or NaN duration).
    SHMEX_INVALID_CONFIG = 24,
    /// An OS call failed in another way (the message names the call and the errno).
    SHMEX_OS = 25,
    /// A required pointer argument is NULL.
    SHMEX_NULL_POINTER = 100,
    /// An argument is malformed: a string that is not UTF-8, meta that is not a JSON object,
    /// an unknown dtype, data kind or return code number, a negative timeout other than -1,
    /// a count or length whose byte size overflows.
    SHMEX_INVALID_ARGUMENT = 101,
    /// A handle that is not live: freed already (double free, use after free) or never
    /// returned by shmex.
    SHMEX_INVALID_HANDLE = 102,
    /// An internal error (a panic inside shmex, caught at the boundary): a bug.
    SHMEX_PANIC = 103,
}

/// Every status, in number order.
pub(crate) const ALL_STATUSES: [shmex_status; 30] = {
    use shmex_status::*;
    [
        SHMEX_OK,
        SHMEX_TIMEOUT,
        SHMEX_CLOSED,
        SHMEX_PEER_DEAD,
        SHMEX_CORRUPT,
        SHMEX_MALFORMED,
        SHMEX_OVER_LIMIT,
        SHMEX_OUT_OF_MEMORY,
        SHMEX_BUFFER_TOO_SMALL,
        SHMEX_TOO_LARGE,
        SHMEX_CANCELLED,
        SHMEX_INVALID_DATA,
        SHMEX_NO_SUCH_TENSOR,
        SHMEX_WRONG_DTYPE,
        SHMEX_MISALIGNED,
        SHMEX_INVALID_BOOL,
        SHMEX_CALL_STATE,
        SHMEX_ALREADY_EXISTS,
        SHMEX_NOT_FOUND,
        SHMEX_PERMISSION_DENIED,
        SHMEX_NO_SPACE,
        SHMEX_INVALID_NAME,
        SHMEX_VERSION_MISMATCH,
        SHMEX_IN_USE,
        SHMEX_INVALID_CONFIG,
        SHMEX_OS,
        SHMEX_NULL_POINTER,
        SHMEX_INVALID_ARGUMENT,
        SHMEX_INVALID_HANDLE,
        SHMEX_PANIC,
    ]
};

/// The status of an error kind: exhaustive, so a new `ErrorCode` does not compile until it
/// has a status here (and in `shmex.h`).
pub(crate) fn status_of(code: ErrorCode) -> shmex_status {
    use shmex_status::*;
    match code {
        ErrorCode::Timeout => SHMEX_TIMEOUT,
        ErrorCode::Closed => SHMEX_CLOSED,
        ErrorCode::PeerDead => SHMEX_PEER_DEAD,
        ErrorCode::Corrupt => SHMEX_CORRUPT,
        ErrorCode::Malformed => SHMEX_MALFORMED,
        ErrorCode::OverLimit => SHMEX_OVER_LIMIT,
        ErrorCode::OutOfMemory => SHMEX_OUT_OF_MEMORY,
        ErrorCode::BufferTooSmall => SHMEX_BUFFER_TOO_SMALL,
        ErrorCode::TooLarge => SHMEX_TOO_LARGE,
        ErrorCode::Cancelled => SHMEX_CANCELLED,
        ErrorCode::InvalidData => SHMEX_INVALID_DATA,
        ErrorCode::NoSuchTensor => SHMEX_NO_SUCH_TENSOR,
        ErrorCode::WrongDType => SHMEX_WRONG_DTYPE,
        ErrorCode::Misaligned => SHMEX_MISALIGNED,
        ErrorCode::InvalidBool => SHMEX_INVALID_BOOL,
        ErrorCode::CallState => SHMEX_CALL_STATE,
        ErrorCode::AlreadyExists => SHMEX_ALREADY_EXISTS,
        ErrorCode::NotFound => SHMEX_NOT_FOUND,
        ErrorCode::PermissionDenied => SHMEX_PERMISSION_DENIED,
        ErrorCode::NoSpace => SHMEX_NO_SPACE,
        ErrorCode::InvalidName => SHMEX_INVALID_NAME,
        ErrorCode::VersionMismatch => SHMEX_VERSION_MISMATCH,
        ErrorCode::InUse => SHMEX_IN_USE,
        ErrorCode::InvalidConfig => SHMEX_INVALID_CONFIG,
        ErrorCode::Os => SHMEX_OS,
    }
}

/// The status's name as a NUL-terminated string.
pub(crate) fn status_name(status: shmex_status) -> &'static str {
    use shmex_status::*;
    match status {
        SHMEX_OK => "SHMEX_OK\0",
        SHMEX_TIMEOUT => "SHMEX_TIMEOUT\0",
        SHMEX_CLOSED => "SHMEX_CLOSED\0",
        SHMEX_PEER_DEAD => "SHMEX_PEER_DEAD\0",
        SHMEX_CORRUPT => "SHMEX_CORRUPT\0",
        SHMEX_MALFORMED => "SHMEX_MALFORMED\0",
        SHMEX_OVER_LIMIT => "SHMEX_OVER_LIMIT\0",
        SHMEX_OUT_OF_MEMORY => "SHMEX_OUT_OF_MEMORY\0",
        SHMEX_BUFFER_TOO_SMALL => "SHMEX_BUFFER_TOO_SMALL\0",
        SHMEX_TOO_LARGE => "SHMEX_TOO_LARGE\0",
        SHMEX_CANCELLED => "SHMEX_CANCELLED\0",
        SHMEX_INVALID_DATA => "SHMEX_INVALID_DATA\0",
        SHMEX_NO_SUCH_TENSOR => "SHMEX_NO_SUCH_TENSOR\0",
        SHMEX_WRONG_DTYPE => "SHMEX_WRONG_DTYPE\0",
        SHMEX_MISALIGNED => "SHMEX_MISALIGNED\0",
        SHMEX_INVALID_BOOL => "SHMEX_INVALID_BOOL\0",
        SHMEX_CALL_STATE => "SHMEX_CALL_STATE\0",
        SHMEX_ALREADY_EXISTS => "SHMEX_ALREADY_EXISTS\0",
        SHMEX_NOT_FOUND => "SHMEX_NOT_FOUND\0",
        SHMEX_PERMISSION_DENIED => "SHMEX_PERMISSION_DENIED\0",
        SHMEX_NO_SPACE => "SHMEX_NO_SPACE\0",
        SHMEX_INVALID_NAME => "SHMEX_INVALID_NAME\0",
        SHMEX_VERSION_MISMATCH => "SHMEX_VERSION_MISMATCH\0",
        SHMEX_IN_USE => "SHMEX_IN_USE\0",
        SHMEX_INVALID_CONFIG => "SHMEX_INVALID_CONFIG\0",
        SHMEX_OS => "SHMEX_OS\0",
        SHMEX_NULL_POINTER => "SHMEX_NULL_POINTER\0",
        SHMEX_INVALID_ARGUMENT => "SHMEX_INVALID_ARGUMENT\0",
        SHMEX_INVALID_HANDLE => "SHMEX_INVALID_HANDLE\0",
        SHMEX_PANIC => "SHMEX_PANIC\0",
    }
}

/// Why an entry point failed: its status and the text `shmex_last_error_message` returns.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: shmex_status,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(status: shmex_status, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }

    /// A Rust error: its code's status, its `Display` text.
    pub(crate) fn coded<E: Coded>(error: &E) -> Failure {
        Failure::new(status_of(error.code()), error.to_string())
    }

    pub(crate) fn null(what: &str) -> Failure {
        Failure::new(
            shmex_status::SHMEX_NULL_POINTER,
            format!("{what} must not be NULL"),
        )
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(shmex_status::SHMEX_INVALID_ARGUMENT, message)
    }
}

thread_local! {
    /// The last failure's text on this thread, NUL-terminated.
    static LAST_ERROR: RefCell<Vec<u8>> = RefCell::new(vec![0]);
}

fn set_last_error(message: &str) {
    let _ = LAST_ERROR.try_with(|last| {
        let mut last = last.borrow_mut();
        last.clear();
        // A NUL inside would cut the C string short.
        last.extend(message.bytes().map(|b| if b == 0 { b'?' } else { b }));
        last.push(0);
    });
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// Runs an entry point's body: a panic becomes `SHMEX_PANIC`, a failure its status, and
/// either sets the thread's last-error text.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> shmex_status {
    let failure = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return shmex_status::SHMEX_OK,
        Ok(Err(failure)) => failure,
        Err(payload) => {
            let text = format!(
                "internal error in shmex (a bug, please report it): {}",
                panic_text(&*payload)
            );
            // Dropping a payload runs foreign code (its Drop); keep that inside the catch too.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            Failure::new(shmex_status::SHMEX_PANIC, text)
        }
    };
    let _ = catch_unwind(AssertUnwindSafe(|| set_last_error(&failure.message)));
    failure.status
}

const NO_MESSAGE: &[u8] = b"\0";

/// The text of the most recent failed call on the calling thread ("" if none failed yet).
///
/// The returned string is owned by shmex (do not free it) and stays valid until the next
/// call of a shmex function on the same thread. Thread-safe: each thread has its own text.
#[no_mangle]
pub extern "C" fn shmex_last_error_message() -> *const c_char {
    catch_unwind(|| {
        LAST_ERROR
            .try_with(|last| last.borrow().as_ptr().cast::<c_char>())
            .unwrap_or(NO_MESSAGE.as_ptr().cast())
    })
    .unwrap_or(NO_MESSAGE.as_ptr().cast())
}

/// The name of a status (`"SHMEX_TIMEOUT"`), or `"SHMEX_UNKNOWN_STATUS"` for a number that
/// is no status. The string is static (never freed, always valid). Thread-safe.
#[no_mangle]
pub extern "C" fn shmex_status_name(status: u32) -> *const c_char {
    let name = ALL_STATUSES
        .iter()
        .find(|s| **s as u32 == status)
        .map_or("SHMEX_UNKNOWN_STATUS\0", |s| status_name(*s));
    name.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_of_codes_keep_the_code_numbers() {
        for code in ErrorCode::ALL {
            let status = status_of(*code);
            assert_eq!(status as u32, *code as u32, "{code:?}");
            assert_eq!(&status_name(status)[6..], format!("{}\0", code.name()));
        }
    }

    #[test]
    fn the_status_table_is_complete_and_ordered() {
        let numbers: Vec<u32> = ALL_STATUSES.iter().map(|s| *s as u32).collect();
        let mut sorted = numbers.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(numbers, sorted);
        assert_eq!(numbers.len(), ErrorCode::ALL.len() + 5);
        for status in ALL_STATUSES {
            assert!(status_name(status).ends_with('\0'));
        }
    }

    #[test]
    fn a_panic_is_a_status_and_a_message() {
        let status = guard(|| panic!("boom"));
        assert_eq!(status, shmex_status::SHMEX_PANIC);
        // SAFETY: the pointer is the thread's NUL-terminated last-error buffer, not changed
        // until the next shmex call on this thread.
        let text = unsafe { std::ffi::CStr::from_ptr(shmex_last_error_message()) };
        assert!(text.to_str().unwrap().contains("boom"));
    }
}
