//! Received tasks and replies: handles over an owned message whose tensors C reads in place.
//! Strings C reads (id, name, meta, tensor names) are made NUL-terminated once, when the
//! handle is made; every pointer handed out points into the object, which lives until its
//! handle is freed.

use std::ffi::{c_char, c_void};

use shmex::frame::{DataKind, OwnedMessage, ReturnCode};

use crate::args::{read_handle, read_handle_by_name};
use crate::handles::Registry;
use crate::status::{guard, shmex_status, Failure};
use crate::types::{data_kind_to_c, dtype_to_c, rc_to_c, shmex_reply, shmex_task, shmex_tensor};

pub(crate) static TASKS: Registry<TaskObject> = Registry::new("shmex_task");
pub(crate) static REPLIES: Registry<ReplyObject> = Registry::new("shmex_reply");

/// `s` with a NUL appended.
pub(crate) fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

/// A received message and its strings, NUL-terminated for C.
pub(crate) struct Received {
    message: OwnedMessage,
    meta_json: Vec<u8>,
    tensor_names: Vec<Vec<u8>>,
}

impl Received {
    pub(crate) fn new(message: OwnedMessage) -> Result<Received, Failure> {
        let meta_json = serde_json::to_string(message.meta()).map_err(|e| {
            Failure::new(
                shmex_status::SHMEX_MALFORMED,
                format!("the meta cannot be written as JSON: {e}"),
            )
        })?;
        let tensor_names = message
            .tensors()
            .map(|t| nul_terminated(t.name()))
            .collect();
        Ok(Received {
            meta_json: nul_terminated(&meta_json),
            tensor_names,
            message,
        })
    }

    fn tensor(&self, index: usize) -> Result<shmex_tensor, Failure> {
        // (A `match`, not `let else`: cbindgen's parser predates it.)
        let (t, name) = match self.message.tensor(index).zip(self.tensor_names.get(index)) {
            Some(found) => found,
            None => {
                return Err(Failure::new(
                    shmex_status::SHMEX_NO_SUCH_TENSOR,
                    format!(
                        "no tensor {index}: the message has {}",
                        self.message.tensor_count()
                    ),
                ))
            }
        };
        Ok(shmex_tensor {
            name: name.as_ptr().cast::<c_char>(),
            dtype: dtype_to_c(t.dtype()) as u32,
            ndim: t.shape().len(),
            shape: t.shape().as_ptr(),
            data: t.bytes().as_ptr().cast::<c_void>(),
            len: t.bytes().len(),
        })
    }

    fn index_of(&self, name: &str) -> Result<usize, Failure> {
        self.message
            .tensors()
            .position(|t| t.name() == name)
            .ok_or_else(|| {
                Failure::new(
                    shmex_status::SHMEX_NO_SUCH_TENSOR,
                    format!("no tensor is named {name:?}"),
                )
            })
    }
}

/// What a task handle holds.
pub(crate) struct TaskObject {
    pub(crate) id: Vec<u8>,
    pub(crate) name: Vec<u8>,
    pub(crate) received: Received,
}

/// What a reply handle holds.
pub(crate) struct ReplyObject {
    pub(crate) rc: ReturnCode,
    pub(crate) data_kind: Option<DataKind>,
    pub(crate) received: Option<Received>,
}

const EMPTY_META: &[u8] = b"{}\0";

/// The parts a task and a reply share.
trait Holder {
    fn received(&self) -> Option<&Received>;
    fn data_kind(&self) -> Option<DataKind>;

    fn meta_ptr(&self) -> *const c_char {
        self.received()
            .map_or(EMPTY_META, |r| r.meta_json.as_slice())
            .as_ptr()
            .cast()
    }

    fn tensor_count(&self) -> usize {
        self.received().map_or(0, |r| r.message.tensor_count())
    }

    fn is_in_place(&self) -> bool {
        self.received().is_some_and(|r| r.message.is_in_ring())
    }

    fn tensor(&self, index: usize) -> Result<shmex_tensor, Failure> {
        match self.received() {
            Some(r) => r.tensor(index),
            None => Err(Failure::new(
                shmex_status::SHMEX_NO_SUCH_TENSOR,
                format!("no tensor {index}: a bare reply has none"),
            )),
        }
    }

    fn tensor_by_name(&self, name: &str) -> Result<shmex_tensor, Failure> {
        match self.received() {
            Some(r) => r.tensor(r.index_of(name)?),
            None => Err(Failure::new(
                shmex_status::SHMEX_NO_SUCH_TENSOR,
                format!("no tensor is named {name:?}: a bare reply has none"),
            )),
        }
    }
}

impl Holder for TaskObject {
    fn received(&self) -> Option<&Received> {
        Some(&self.received)
    }
    fn data_kind(&self) -> Option<DataKind> {
        self.received.message.data_kind()
    }
}

impl Holder for ReplyObject {
    fn received(&self) -> Option<&Received> {
        self.received.as_ref()
    }
    fn data_kind(&self) -> Option<DataKind> {
        self.data_kind
    }
}

// ---------------------------------------------------------------------------------------
// Tasks.

/// The task's id (NUL-terminated; FLARE's `task_id`). The string belongs to the task and
/// stays valid until `shmex_task_free(task)`. Thread-safe.
///
/// # Safety
/// `out_id` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn shmex_task_id(
    task: *const shmex_task,
    out_id: *mut *const c_char,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle(&TASKS, task.addr(), out_id, "out_id", |o| {
            Ok(o.id.as_ptr().cast())
        })
    }
}

/// The task's name (e.g. `"train"`, NUL-terminated); valid until `shmex_task_free(task)`.
/// Thread-safe.
///
/// # Safety
/// `out_name` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn shmex_task_name(
    task: *const shmex_task,
    out_name: *mut *const c_char,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle(&TASKS, task.addr(), out_name, "out_name", |o| {
            Ok(o.name.as_ptr().cast())
        })
    }
}

/// The task's meta as a NUL-terminated JSON object (with `current_round`, `total_round`,
/// `data_kind` when the exchanger set them); valid until `shmex_task_free(task)`.
/// Thread-safe.
///
/// # Safety
/// `out_json` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn shmex_task_meta(
    task: *const shmex_task,
    out_json: *mut *const c_char,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle(&TASKS, task.addr(), out_json, "out_json", |o| {
            Ok(o.meta_ptr())
        })
    }
}

/// The task's data kind (a `shmex_data_kind`). Thread-safe.
///
/// # Safety
/// `out_kind` is NULL or valid for writing a `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn shmex_task_data_kind(
    task: *const shmex_task,
    out_kind: *mut u32,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle(&TASKS, task.addr(), out_kind, "out_kind", |o| {
            Ok(data_kind_to_c(o.data_kind()) as u32)
        })
    }
}

/// The number of tensors of the task. Thread-safe.
///
/// # Safety
/// `out_count` is NULL or valid for writing a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn shmex_task_tensor_count(
    task: *const shmex_task,
    out_count: *mut usize,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle(&TASKS, task.addr(), out_count, "out_count", |o| {
            Ok(o.tensor_count())
        })
    }
}

/// Describes tensor `index` (0-based) of the task in `*out_tensor`: a view in place, its
/// pointers valid until `shmex_task_free(task)`. `SHMEX_NO_SUCH_TENSOR` when `index` is out
/// of range. The data is read-only. Thread-safe.
///
/// # Safety
/// `out_tensor` is NULL or valid for writing a `shmex_tensor`.
#[no_mangle]
pub unsafe extern "C" fn shmex_task_tensor(
    task: *const shmex_task,
    index: usize,
    out_tensor: *mut shmex_tensor,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle(&TASKS, task.addr(), out_tensor, "out_tensor", |o| {
            o.tensor(index)
        })
    }
}

/// As `shmex_task_tensor`, for the tensor named `name`. Thread-safe.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; `out_tensor` is NULL or valid for writing a
/// `shmex_tensor`.
#[no_mangle]
pub unsafe extern "C" fn shmex_task_tensor_by_name(
    task: *const shmex_task,
    name: *const c_char,
    out_tensor: *mut shmex_tensor,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle_by_name(
            &TASKS,
            task.addr(),
            name,
            out_tensor,
            "out_tensor",
            |o, name| o.tensor_by_name(name),
        )
    }
}

/// Whether the task is read in place in the task ring (`receive_in_place` was on and the
/// task arrived whole with room to spare, see `shmex_agent_options.receive_in_place`) rather
/// than from memory of its own. While it is, its ring space stays taken until
/// `shmex_task_free(task)`: the exchanger cannot send another task that needs that space
/// before then. Thread-safe.
///
/// # Safety
/// `out_in_place` is NULL or valid for writing a `bool`.
#[no_mangle]
pub unsafe extern "C" fn shmex_task_is_in_place(
    task: *const shmex_task,
    out_in_place: *mut bool,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle(&TASKS, task.addr(), out_in_place, "out_in_place", |o| {
            Ok(o.is_in_place())
        })
    }
}

/// Frees a task: every pointer read from it becomes invalid. NULL does nothing (`SHMEX_OK`);
/// a handle freed already is `SHMEX_INVALID_HANDLE`. Freeing a task does not answer it
/// (`shmex_agent_submit_result` does). Not to be called while another thread still reads
/// the task's tensors.
#[no_mangle]
pub extern "C" fn shmex_task_free(task: *mut shmex_task) -> shmex_status {
    guard(|| {
        if !task.is_null() {
            drop(TASKS.remove(task.addr())?);
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// Replies.

/// The reply's return code (a `shmex_rc`): `SHMEX_RC_OK` with the result's data, or the
/// reason there is none (`SHMEX_RC_TASK_ABORTED`, `SHMEX_RC_TIMEOUT`, ..., or the agent's
/// own code). Thread-safe.
///
/// # Safety
/// `out_rc` is NULL or valid for writing a `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn shmex_reply_rc(
    reply: *const shmex_reply,
    out_rc: *mut u32,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle(&REPLIES, reply.addr(), out_rc, "out_rc", |o| {
            Ok(rc_to_c(o.rc) as u32)
        })
    }
}

/// The result's data kind (a `shmex_data_kind`; `SHMEX_DATA_KIND_NONE` for a bare reply).
/// Thread-safe.
///
/// # Safety
/// `out_kind` is NULL or valid for writing a `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn shmex_reply_data_kind(
    reply: *const shmex_reply,
    out_kind: *mut u32,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle(&REPLIES, reply.addr(), out_kind, "out_kind", |o| {
            Ok(data_kind_to_c(o.data_kind()) as u32)
        })
    }
}

/// The result's meta as a NUL-terminated JSON object (`"{}"` for a bare reply); valid until
/// `shmex_reply_free(reply)`. Thread-safe.
///
/// # Safety
/// `out_json` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn shmex_reply_meta(
    reply: *const shmex_reply,
    out_json: *mut *const c_char,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle(&REPLIES, reply.addr(), out_json, "out_json", |o| {
            Ok(o.meta_ptr())
        })
    }
}

/// The number of tensors of the result (0 for a bare reply). Thread-safe.
///
/// # Safety
/// `out_count` is NULL or valid for writing a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn shmex_reply_tensor_count(
    reply: *const shmex_reply,
    out_count: *mut usize,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle(&REPLIES, reply.addr(), out_count, "out_count", |o| {
            Ok(o.tensor_count())
        })
    }
}

/// Describes tensor `index` of the result in `*out_tensor` (a view in place, valid until
/// `shmex_reply_free(reply)`). Thread-safe.
///
/// # Safety
/// `out_tensor` is NULL or valid for writing a `shmex_tensor`.
#[no_mangle]
pub unsafe extern "C" fn shmex_reply_tensor(
    reply: *const shmex_reply,
    index: usize,
    out_tensor: *mut shmex_tensor,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle(&REPLIES, reply.addr(), out_tensor, "out_tensor", |o| {
            o.tensor(index)
        })
    }
}

/// As `shmex_reply_tensor`, for the tensor named `name`. Thread-safe.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; `out_tensor` is NULL or valid for writing a
/// `shmex_tensor`.
#[no_mangle]
pub unsafe extern "C" fn shmex_reply_tensor_by_name(
    reply: *const shmex_reply,
    name: *const c_char,
    out_tensor: *mut shmex_tensor,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle_by_name(
            &REPLIES,
            reply.addr(),
            name,
            out_tensor,
            "out_tensor",
            |o, name| o.tensor_by_name(name),
        )
    }
}

/// Whether the result is read in place in the result ring (`receive_in_place` was on and the
/// result arrived whole with room to spare, see `shmex_exchanger_options.receive_in_place`)
/// rather than from memory of its own; false for a bare reply. While it is, its ring space
/// stays taken until `shmex_reply_free(reply)`: the agent cannot send another result that
/// needs that space before then. Thread-safe.
///
/// # Safety
/// `out_in_place` is NULL or valid for writing a `bool`.
#[no_mangle]
pub unsafe extern "C" fn shmex_reply_is_in_place(
    reply: *const shmex_reply,
    out_in_place: *mut bool,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle(&REPLIES, reply.addr(), out_in_place, "out_in_place", |o| {
            Ok(o.is_in_place())
        })
    }
}

/// Frees a reply: every pointer read from it becomes invalid. NULL does nothing
/// (`SHMEX_OK`); a handle freed already is `SHMEX_INVALID_HANDLE`.
#[no_mangle]
pub extern "C" fn shmex_reply_free(reply: *mut shmex_reply) -> shmex_status {
    guard(|| {
        if !reply.is_null() {
            drop(REPLIES.remove(reply.addr())?);
        }
        Ok(())
    })
}
