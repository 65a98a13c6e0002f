//! Reading what C passes: strings, arrays, tensors and DXOs, each pointer checked before use,
//! and out-pointers checked before any work is done.

use std::ffi::{c_char, CStr};
use std::ptr::NonNull;

use serde_json::{Map, Value};
use shmex::frame::{DType, Dxo, LoanSpec, MAX_DIMS};
use shmex::protocol::Headers;

use crate::handles::Registry;
use crate::status::{guard, shmex_status, Failure};
use crate::types::{
    data_kind_from_c, dtype_from_c, shmex_data, shmex_headers, shmex_loan_spec, shmex_tensor,
    shmex_tensor_spec,
};

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid and unchanged for
/// `'a`.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: not NULL (checked above), and the caller promises a NUL-terminated string
    // valid for 'a.
    let c = unsafe { CStr::from_ptr(ptr) };
    c.to_str()
        .map_err(|_| Failure::invalid(format!("{what} is not valid UTF-8")))
}

/// An array argument of `count` elements (NULL is allowed when `count` is 0).
///
/// # Safety
/// When `count` is not 0 and `ptr` is not NULL, `ptr` points to `count` initialised `T`
/// that stay valid and unchanged for `'a`.
pub(crate) unsafe fn slice_arg<'a, T>(
    ptr: *const T,
    count: usize,
    what: &str,
) -> Result<&'a [T], Failure> {
    if count == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::null(&format!("{what} (with a count of {count})")));
    }
    let fits = count
        .checked_mul(size_of::<T>())
        .is_some_and(|bytes| bytes <= isize::MAX as usize);
    if !fits {
        return Err(Failure::invalid(format!(
            "{what}: a count of {count} is larger than any array can be"
        )));
    }
    if !ptr.is_aligned() {
        return Err(Failure::invalid(format!(
            "{what} is not aligned for its type"
        )));
    }
    // SAFETY: not NULL, aligned, and the byte size fits in isize (checked above); the caller
    // promises `count` initialised elements valid for 'a.
    Ok(unsafe { std::slice::from_raw_parts(ptr, count) })
}

/// The C struct `ptr` points to, checked not NULL and aligned first.
///
/// # Safety
/// `ptr` is NULL or points to a valid `T`, unchanged for `'a`.
pub(crate) unsafe fn ref_arg<'a, T>(ptr: *const T, what: &str) -> Result<&'a T, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    if !ptr.is_aligned() {
        return Err(Failure::invalid(format!(
            "{what} is not aligned for its type"
        )));
    }
    // SAFETY: not NULL and aligned (checked above); the caller promises a valid `T` for 'a.
    Ok(unsafe { &*ptr })
}

/// A pointer the result is written to, checked up front so that a NULL out-pointer fails
/// before anything is created.
pub(crate) struct Out<T>(NonNull<T>);

impl<T> Out<T> {
    /// # Safety
    /// `ptr` is NULL or valid for writes of a `T` (aligned) until [`Out::write`] is called.
    pub(crate) unsafe fn new(ptr: *mut T, what: &str) -> Result<Out<T>, Failure> {
        let ptr = NonNull::new(ptr).ok_or_else(|| Failure::null(what))?;
        if !ptr.as_ptr().is_aligned() {
            return Err(Failure::invalid(format!(
                "{what} is not aligned for its type"
            )));
        }
        Ok(Out(ptr))
    }

    /// Stores the result.
    pub(crate) fn write(&self, value: T) {
        // SAFETY: non-NULL and aligned (checked in `new`), valid for writes as `new`'s caller
        // promised; `T` is a plain C type (no drop of the old value is wanted).
        unsafe { self.0.as_ptr().write(value) }
    }
}

/// Writes `read(object)` to `*out`, `object` being the live object of `handle` in
/// `registry`: `out` is checked first, then the handle, as every accessor of a handle does.
///
/// # Safety
/// `out` is NULL or valid for writes of a `T` (aligned).
pub(crate) unsafe fn read_handle<O, T>(
    registry: &Registry<O>,
    handle: usize,
    out: *mut T,
    what: &str,
    read: impl FnOnce(&O) -> Result<T, Failure>,
) -> shmex_status {
    guard(|| {
        // SAFETY: the caller's contract is `Out::new`'s.
        let out = unsafe { Out::new(out, what) }?;
        let object = registry.get(handle)?;
        out.write(read(&object)?);
        Ok(())
    })
}

/// As [`read_handle`], for an accessor that also takes a tensor's `name`: `out` is checked
/// first, then `name`, then the handle.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; `out` is NULL or valid for writes of a `T`
/// (aligned).
pub(crate) unsafe fn read_handle_by_name<O, T>(
    registry: &Registry<O>,
    handle: usize,
    name: *const c_char,
    out: *mut T,
    what: &str,
    read: impl FnOnce(&O, &str) -> Result<T, Failure>,
) -> shmex_status {
    guard(|| {
        // SAFETY: the caller's contract is `Out::new`'s.
        let out = unsafe { Out::new(out, what) }?;
        // SAFETY: the caller's contract is `str_arg`'s.
        let name = unsafe { str_arg(name, "name") }?;
        let object = registry.get(handle)?;
        out.write(read(&object, name)?);
        Ok(())
    })
}

/// Writes `value` to an optional out-pointer (NULL: not wanted).
///
/// # Safety
/// `ptr` is NULL or valid for writes of a `T` (aligned).
pub(crate) unsafe fn write_optional<T>(ptr: *mut T, value: T, what: &str) -> Result<(), Failure> {
    if ptr.is_null() {
        return Ok(());
    }
    // SAFETY: the caller's contract is `Out::new`'s.
    unsafe { Out::new(ptr, what) }?.write(value);
    Ok(())
}

/// A meta JSON argument: NULL is an empty object.
///
/// # Safety
/// As [`str_arg`].
pub(crate) unsafe fn meta_arg(ptr: *const c_char) -> Result<Map<String, Value>, Failure> {
    if ptr.is_null() {
        return Ok(Map::new());
    }
    // SAFETY: the caller's contract is `str_arg`'s.
    let text = unsafe { str_arg(ptr, "meta_json") }?;
    serde_json::from_str(text)
        .map_err(|e| Failure::invalid(format!("meta_json is not a JSON object: {e}")))
}

/// The name, dtype and shape of tensor `index` as C describes it (a tensor to send or a
/// loaned tensor's spec), checked in this order.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; `shape` is NULL or holds `ndim` extents; both
/// valid and unchanged for `'a`.
unsafe fn layout_arg<'a>(
    name: *const c_char,
    dtype: u32,
    ndim: usize,
    shape: *const u64,
    index: usize,
) -> Result<(&'a str, DType, &'a [u64]), Failure> {
    // SAFETY: the caller's contract.
    let name = unsafe { str_arg(name, &format!("the name of tensor {index}")) }?;
    let dtype = dtype_from_c(dtype)
        .map_err(|f| Failure::invalid(format!("tensor {name:?}: {}", f.message)))?;
    if ndim > MAX_DIMS {
        return Err(Failure::new(
            shmex_status::SHMEX_INVALID_DATA,
            format!("tensor {name:?} has {ndim} dimensions, at most {MAX_DIMS} are allowed"),
        ));
    }
    // SAFETY: the caller's contract: `shape` holds `ndim` extents.
    let shape = unsafe { slice_arg(shape, ndim, &format!("the shape of tensor {name:?}")) }?;
    Ok((name, dtype, shape))
}

/// One tensor of a DXO to send, added to `dxo`.
///
/// # Safety
/// `t`'s pointers follow `shmex_tensor`'s contract for sending: `name` a NUL-terminated
/// string, `shape` `ndim` extents, `data` `len` bytes, all valid and unchanged for `'a`.
unsafe fn add_tensor<'a>(dxo: Dxo<'a>, t: &shmex_tensor, index: usize) -> Result<Dxo<'a>, Failure> {
    // SAFETY: the caller's contract.
    let (name, dtype, shape) = unsafe { layout_arg(t.name, t.dtype, t.ndim, t.shape, index) }?;
    // SAFETY: the caller's contract: `data` holds `len` bytes.
    let bytes = unsafe {
        slice_arg(
            t.data.cast::<u8>(),
            t.len,
            &format!("the data of tensor {name:?}"),
        )
    }?;
    dxo.with_tensor_bytes(name, dtype, shape, bytes)
        .map_err(|e| Failure::coded(&e))
}

/// The DXO a `shmex_data` describes, borrowing the caller's tensor bytes.
///
/// # Safety
/// `data` is NULL or points to a `shmex_data` whose pointers follow its contract, all valid
/// and unchanged for `'a`.
pub(crate) unsafe fn dxo_arg<'a>(data: *const shmex_data, what: &str) -> Result<Dxo<'a>, Failure> {
    // SAFETY: the caller promises a valid `shmex_data` for 'a (or NULL).
    let data = unsafe { ref_arg(data, what) }?;
    let kind = data_kind_from_c(data.data_kind)?;
    // SAFETY: the caller's contract for `meta_json`.
    let meta = unsafe { meta_arg(data.meta_json) }?;
    // SAFETY: the caller's contract for `tensors`.
    let tensors = unsafe { slice_arg(data.tensors, data.tensor_count, "tensors") }?;
    let mut dxo = Dxo::new(kind).with_meta_map(meta);
    for (index, t) in tensors.iter().enumerate() {
        // SAFETY: the caller's contract covers each tensor.
        dxo = unsafe { add_tensor(dxo, t, index) }?;
    }
    Ok(dxo)
}

/// The layout of one loaned tensor: name, dtype and shape.
///
/// # Safety
/// `t.name` is NULL or a NUL-terminated string; `t.shape` is NULL or holds `t.ndim` extents;
/// both valid and unchanged during the call.
unsafe fn tensor_spec_arg(
    t: &shmex_tensor_spec,
    index: usize,
) -> Result<(String, DType, Vec<u64>), Failure> {
    // SAFETY: the caller's contract.
    let (name, dtype, shape) = unsafe { layout_arg(t.name, t.dtype, t.ndim, t.shape, index) }?;
    Ok((name.to_owned(), dtype, shape.to_vec()))
}

/// The loan spec a `shmex_loan_spec` describes (copied: nothing of the caller's is kept).
///
/// # Safety
/// `spec` is NULL or points to a `shmex_loan_spec` whose pointers follow its contract during
/// the call.
pub(crate) unsafe fn loan_spec_arg(spec: *const shmex_loan_spec) -> Result<LoanSpec, Failure> {
    // SAFETY: the caller promises a valid `shmex_loan_spec` during the call (or NULL); the
    // plain C struct is copied out here.
    let spec = *unsafe { ref_arg(spec, "spec") }?;
    let mut loan = LoanSpec::new(data_kind_from_c(spec.data_kind)?);
    // SAFETY: the caller's contract for `meta_json`.
    loan.meta = unsafe { meta_arg(spec.meta_json) }?;
    // SAFETY: the caller's contract for `tensors`.
    let tensors = unsafe { slice_arg(spec.tensors, spec.tensor_count, "spec.tensors") }?;
    for (index, t) in tensors.iter().enumerate() {
        // SAFETY: the caller's contract covers each tensor.
        loan.tensors.push(unsafe { tensor_spec_arg(t, index) }?);
    }
    Ok(loan)
}

/// FLARE's task headers from C.
///
/// # Safety
/// `headers` is NULL or points to a `shmex_headers` whose `task_id` is NULL or a
/// NUL-terminated string, valid during the call.
pub(crate) unsafe fn headers_arg(headers: *const shmex_headers) -> Result<Headers, Failure> {
    // SAFETY: the caller promises a valid `shmex_headers` during the call (or NULL); the
    // plain C struct is copied out here.
    let headers = *unsafe { ref_arg(headers, "headers") }?;
    // SAFETY: the caller's contract.
    let task_id = unsafe { str_arg(headers.task_id, "headers.task_id") }?;
    let mut rust_headers = Headers::new(task_id);
    rust_headers.current_round = (headers.current_round >= 0).then_some(headers.current_round);
    rust_headers.num_rounds = (headers.num_rounds >= 0).then_some(headers.num_rounds);
    Ok(rust_headers)
}
