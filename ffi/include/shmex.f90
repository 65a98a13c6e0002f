! shmex.f90: a Fortran 2008 module over the C API of shmex (shmex.h), with iso_c_binding.
! Compile it with your program (module files are compiler-specific):
!   gfortran -std=f2008 shmex.f90 app.f90 $(pkg-config --libs shmex)
!
! Handles are type(c_ptr); every function returns a status (integer(c_int32_t), SHMEX_OK = 0)
! as in shmex.h, whose comments give the lifetimes: pointers read from a task or reply (names,
! meta, tensor data) stay valid until shmex_task_free / shmex_reply_free.
! Strings passed in must be NUL-terminated: use shmex_c_string(s) (trim(s)//c_null_char).
!
! Tensors: shmex_tensor_f32 / _f64 give a received tensor as a rank-1 Fortran array pointer
! over the data in place (c_f_pointer; no copy). shmex lays tensors out row-major (C order):
! a tensor of C shape [n0, n1] is, seen from Fortran, column-major of shape (n1, n0); use
! shmex_tensor_fortran_shape for the reversed extents, or reshape the rank-1 pointer.
!
! Options: fill a type(shmex_agent_options) declared with the target attribute from
! shmex_agent_options_default, change fields, and pass c_loc(options) to shmex_agent_attach
! (c_null_ptr: the defaults); the same for shmex_exchanger_options and shmex_exchanger_create.
! The types mirror shmex.h's structs field by field (bind(C): the same layout); shmex.h
! documents each field. receive_in_place (non-zero: on) reads a task (agent) or result
! (exchanger) that arrived whole in place in the ring, its ring space taken until the task or
! reply is freed: free each before fetching the next (shmex_task_is_in_place and
! shmex_reply_is_in_place tell whether it was read in place).
!
! Loans: shmex_agent_loan_result (and shmex_exchanger_loan_task) reserve the tensors of a
! shmex_loan_spec in shared memory; shmex_loan_tensor_f32 / _f64 map a loaned tensor to a
! rank-1 Fortran array pointer to write in place. The pointer is valid until the loan is
! committed (shmex_result_loan_commit), executed (shmex_task_loan_execute) or abandoned;
! each of these ends the loan handle.
module shmex
  use, intrinsic :: iso_c_binding
  implicit none

  ! shmex_status
  integer(c_int32_t), parameter :: SHMEX_OK = 0, SHMEX_TIMEOUT = 1, SHMEX_CLOSED = 2, &
    SHMEX_PEER_DEAD = 3, SHMEX_CORRUPT = 4, SHMEX_MALFORMED = 5, SHMEX_OVER_LIMIT = 6, &
    SHMEX_OUT_OF_MEMORY = 7, SHMEX_BUFFER_TOO_SMALL = 8, SHMEX_TOO_LARGE = 9, &
    SHMEX_CANCELLED = 10, SHMEX_INVALID_DATA = 11, SHMEX_NO_SUCH_TENSOR = 12, &
    SHMEX_WRONG_DTYPE = 13, SHMEX_MISALIGNED = 14, SHMEX_INVALID_BOOL = 15, &
    SHMEX_CALL_STATE = 16, SHMEX_ALREADY_EXISTS = 17, SHMEX_NOT_FOUND = 18, &
    SHMEX_PERMISSION_DENIED = 19, SHMEX_NO_SPACE = 20, SHMEX_INVALID_NAME = 21, &
    SHMEX_VERSION_MISMATCH = 22, SHMEX_IN_USE = 23, SHMEX_INVALID_CONFIG = 24, SHMEX_OS = 25, &
    SHMEX_NULL_POINTER = 100, SHMEX_INVALID_ARGUMENT = 101, SHMEX_INVALID_HANDLE = 102, &
    SHMEX_PANIC = 103
  ! shmex_dtype
  integer(c_int32_t), parameter :: SHMEX_DTYPE_F16 = 1, SHMEX_DTYPE_BF16 = 2, &
    SHMEX_DTYPE_F32 = 3, SHMEX_DTYPE_F64 = 4, SHMEX_DTYPE_I8 = 5, SHMEX_DTYPE_I16 = 6, &
    SHMEX_DTYPE_I32 = 7, SHMEX_DTYPE_I64 = 8, SHMEX_DTYPE_U8 = 9, SHMEX_DTYPE_U16 = 10, &
    SHMEX_DTYPE_U32 = 11, SHMEX_DTYPE_U64 = 12, SHMEX_DTYPE_BOOL = 13
  ! shmex_data_kind
  integer(c_int32_t), parameter :: SHMEX_DATA_KIND_NONE = 0, SHMEX_DATA_KIND_FL_MODEL = 1, &
    SHMEX_DATA_KIND_WEIGHTS = 2, SHMEX_DATA_KIND_WEIGHT_DIFF = 3, SHMEX_DATA_KIND_METRICS = 4, &
    SHMEX_DATA_KIND_ANALYTIC = 5, SHMEX_DATA_KIND_COLLECTION = 6, &
    SHMEX_DATA_KIND_STATISTICS = 7, SHMEX_DATA_KIND_PSI = 8, SHMEX_DATA_KIND_APP_DEFINED = 9
  ! shmex_rc (the common ones; the numbers are FLARE's order, see shmex.h)
  integer(c_int32_t), parameter :: SHMEX_RC_OK = 0, SHMEX_RC_BAD_REQUEST_DATA = 2, &
    SHMEX_RC_BAD_TASK_DATA = 3, SHMEX_RC_TIMEOUT = 5, SHMEX_RC_ERROR = 6, &
    SHMEX_RC_EXECUTION_EXCEPTION = 7, SHMEX_RC_TASK_ABORTED = 12, &
    SHMEX_RC_EARLY_TERMINATION = 22
  ! Ring bytes receive_in_place keeps free behind a held message (shmex.h)
  integer(c_int64_t), parameter :: SHMEX_IN_PLACE_KEEP_FREE = 65536

  type, bind(C) :: shmex_tensor
    type(c_ptr) :: name = c_null_ptr
    integer(c_int32_t) :: dtype = 0
    integer(c_size_t) :: ndim = 0
    type(c_ptr) :: shape = c_null_ptr
    type(c_ptr) :: data = c_null_ptr
    integer(c_size_t) :: len = 0
  end type shmex_tensor

  type, bind(C) :: shmex_data
    integer(c_int32_t) :: data_kind = SHMEX_DATA_KIND_WEIGHTS
    type(c_ptr) :: meta_json = c_null_ptr
    type(c_ptr) :: tensors = c_null_ptr
    integer(c_size_t) :: tensor_count = 0
  end type shmex_data

  ! One tensor of a loan (name: a NUL-terminated string, c_loc of a character array)
  type, bind(C) :: shmex_tensor_spec
    type(c_ptr) :: name = c_null_ptr
    integer(c_int32_t) :: dtype = 0
    integer(c_size_t) :: ndim = 0
    type(c_ptr) :: shape = c_null_ptr
  end type shmex_tensor_spec

  type, bind(C) :: shmex_loan_spec
    integer(c_int32_t) :: data_kind = SHMEX_DATA_KIND_WEIGHTS
    type(c_ptr) :: meta_json = c_null_ptr
    type(c_ptr) :: tensors = c_null_ptr
    integer(c_size_t) :: tensor_count = 0
  end type shmex_loan_spec

  ! A loaned tensor: data points into shared memory, to be written
  type, bind(C) :: shmex_tensor_mut
    type(c_ptr) :: name = c_null_ptr
    integer(c_int32_t) :: dtype = 0
    integer(c_size_t) :: ndim = 0
    type(c_ptr) :: shape = c_null_ptr
    type(c_ptr) :: data = c_null_ptr
    integer(c_size_t) :: len = 0
  end type shmex_tensor_mut

  ! shmex.h's shmex_exchanger_options (durations in seconds; c_int64_t for uint64_t)
  type, bind(C) :: shmex_exchanger_options
    real(c_double) :: send_task_timeout
    real(c_double) :: resend_task_interval
    real(c_double) :: agent_connection_timeout
    real(c_double) :: agent_heartbeat_timeout
    real(c_double) :: agent_heartbeat_interval
    real(c_double) :: agent_ack_timeout
    real(c_double) :: result_timeout
    integer(c_int32_t) :: on_agent_restart
    integer(c_int64_t) :: task_ring_capacity
    integer(c_int64_t) :: result_ring_capacity
    integer(c_int) :: reclaim_stale
    integer(c_int) :: receive_in_place
    integer(c_int64_t) :: expected_message_len
  end type shmex_exchanger_options

  ! shmex.h's shmex_agent_options (durations in seconds; c_int64_t for uint64_t)
  type, bind(C) :: shmex_agent_options
    real(c_double) :: submit_result_timeout
    real(c_double) :: flare_site_connection_timeout
    real(c_double) :: flare_site_heartbeat_timeout
    real(c_double) :: resend_result_interval
    real(c_double) :: attach_timeout
    real(c_double) :: heartbeat_interval
    integer(c_int) :: receive_in_place
    integer(c_int64_t) :: expected_message_len
  end type shmex_agent_options

  type, bind(C) :: shmex_headers
    type(c_ptr) :: task_id = c_null_ptr
    integer(c_int64_t) :: current_round = -1
    integer(c_int64_t) :: num_rounds = -1
  end type shmex_headers

  interface
    ! C's strlen (public: a private procedure cannot carry a binding label)
    function c_strlen(s) bind(C, name="strlen")
      import :: c_ptr, c_size_t
      type(c_ptr), value :: s
      integer(c_size_t) :: c_strlen
    end function c_strlen

    function shmex_last_error_message() bind(C, name="shmex_last_error_message")
      import :: c_ptr
      type(c_ptr) :: shmex_last_error_message
    end function shmex_last_error_message

    function shmex_status_name(status) bind(C, name="shmex_status_name")
      import :: c_ptr, c_int32_t
      integer(c_int32_t), value :: status
      type(c_ptr) :: shmex_status_name
    end function shmex_status_name

    function shmex_agent_options_default(out_options) &
        bind(C, name="shmex_agent_options_default")
      import :: c_int32_t, shmex_agent_options
      type(shmex_agent_options), intent(out) :: out_options
      integer(c_int32_t) :: shmex_agent_options_default
    end function shmex_agent_options_default

    ! options: c_null_ptr for the defaults, or c_loc of a type(shmex_agent_options), target
    function shmex_agent_attach(site, agent_id, options, out_agent) &
        bind(C, name="shmex_agent_attach")
      import :: c_ptr, c_char, c_int32_t
      character(kind=c_char), intent(in) :: site(*), agent_id(*)
      type(c_ptr), value :: options
      type(c_ptr), intent(out) :: out_agent
      integer(c_int32_t) :: shmex_agent_attach
    end function shmex_agent_attach

    function shmex_agent_get_task(agent, timeout_ms, out_task) &
        bind(C, name="shmex_agent_get_task")
      import :: c_ptr, c_int64_t, c_int32_t
      type(c_ptr), value :: agent
      integer(c_int64_t), value :: timeout_ms
      type(c_ptr), intent(out) :: out_task
      integer(c_int32_t) :: shmex_agent_get_task
    end function shmex_agent_get_task

    function shmex_agent_submit_result(agent, result, rc, out_accepted) &
        bind(C, name="shmex_agent_submit_result")
      import :: c_ptr, c_int32_t, c_bool, shmex_data
      type(c_ptr), value :: agent
      type(shmex_data), intent(in) :: result
      integer(c_int32_t), value :: rc
      logical(c_bool), intent(out) :: out_accepted
      integer(c_int32_t) :: shmex_agent_submit_result
    end function shmex_agent_submit_result

    function shmex_agent_is_aborted(agent, out_aborted) bind(C, name="shmex_agent_is_aborted")
      import :: c_ptr, c_int32_t, c_bool
      type(c_ptr), value :: agent
      logical(c_bool), intent(out) :: out_aborted
      integer(c_int32_t) :: shmex_agent_is_aborted
    end function shmex_agent_is_aborted

    function shmex_agent_close(agent) bind(C, name="shmex_agent_close")
      import :: c_ptr, c_int32_t
      type(c_ptr), value :: agent
      integer(c_int32_t) :: shmex_agent_close
    end function shmex_agent_close

    function shmex_agent_free(agent) bind(C, name="shmex_agent_free")
      import :: c_ptr, c_int32_t
      type(c_ptr), value :: agent
      integer(c_int32_t) :: shmex_agent_free
    end function shmex_agent_free

    function shmex_task_id(task, out_id) bind(C, name="shmex_task_id")
      import :: c_ptr, c_int32_t
      type(c_ptr), value :: task
      type(c_ptr), intent(out) :: out_id
      integer(c_int32_t) :: shmex_task_id
    end function shmex_task_id

    function shmex_task_meta(task, out_json) bind(C, name="shmex_task_meta")
      import :: c_ptr, c_int32_t
      type(c_ptr), value :: task
      type(c_ptr), intent(out) :: out_json
      integer(c_int32_t) :: shmex_task_meta
    end function shmex_task_meta

    function shmex_task_tensor_count(task, out_count) bind(C, name="shmex_task_tensor_count")
      import :: c_ptr, c_int32_t, c_size_t
      type(c_ptr), value :: task
      integer(c_size_t), intent(out) :: out_count
      integer(c_int32_t) :: shmex_task_tensor_count
    end function shmex_task_tensor_count

    ! index is 0-based, as in C
    function shmex_task_tensor(task, index, out_tensor) bind(C, name="shmex_task_tensor")
      import :: c_ptr, c_int32_t, c_size_t, shmex_tensor
      type(c_ptr), value :: task
      integer(c_size_t), value :: index
      type(shmex_tensor), intent(out) :: out_tensor
      integer(c_int32_t) :: shmex_task_tensor
    end function shmex_task_tensor

    function shmex_task_is_in_place(task, out_in_place) bind(C, name="shmex_task_is_in_place")
      import :: c_ptr, c_int32_t, c_bool
      type(c_ptr), value :: task
      logical(c_bool), intent(out) :: out_in_place
      integer(c_int32_t) :: shmex_task_is_in_place
    end function shmex_task_is_in_place

    function shmex_task_free(task) bind(C, name="shmex_task_free")
      import :: c_ptr, c_int32_t
      type(c_ptr), value :: task
      integer(c_int32_t) :: shmex_task_free
    end function shmex_task_free

    function shmex_exchanger_options_default(out_options) &
        bind(C, name="shmex_exchanger_options_default")
      import :: c_int32_t, shmex_exchanger_options
      type(shmex_exchanger_options), intent(out) :: out_options
      integer(c_int32_t) :: shmex_exchanger_options_default
    end function shmex_exchanger_options_default

    ! options: c_null_ptr for the defaults, or c_loc of a type(shmex_exchanger_options), target
    function shmex_exchanger_create(site, agent_id, options, out_exchanger) &
        bind(C, name="shmex_exchanger_create")
      import :: c_ptr, c_char, c_int32_t
      character(kind=c_char), intent(in) :: site(*), agent_id(*)
      type(c_ptr), value :: options
      type(c_ptr), intent(out) :: out_exchanger
      integer(c_int32_t) :: shmex_exchanger_create
    end function shmex_exchanger_create

    ! abort: c_null_ptr, or a handle from shmex_abort_new
    function shmex_exchanger_execute(exchanger, task_name, headers, data, abort, out_reply) &
        bind(C, name="shmex_exchanger_execute")
      import :: c_ptr, c_char, c_int32_t, shmex_headers, shmex_data
      type(c_ptr), value :: exchanger
      character(kind=c_char), intent(in) :: task_name(*)
      type(shmex_headers), intent(in) :: headers
      type(shmex_data), intent(in) :: data
      type(c_ptr), value :: abort
      type(c_ptr), intent(out) :: out_reply
      integer(c_int32_t) :: shmex_exchanger_execute
    end function shmex_exchanger_execute

    function shmex_exchanger_close(exchanger) bind(C, name="shmex_exchanger_close")
      import :: c_ptr, c_int32_t
      type(c_ptr), value :: exchanger
      integer(c_int32_t) :: shmex_exchanger_close
    end function shmex_exchanger_close

    function shmex_exchanger_free(exchanger) bind(C, name="shmex_exchanger_free")
      import :: c_ptr, c_int32_t
      type(c_ptr), value :: exchanger
      integer(c_int32_t) :: shmex_exchanger_free
    end function shmex_exchanger_free

    function shmex_abort_new(out_abort) bind(C, name="shmex_abort_new")
      import :: c_ptr, c_int32_t
      type(c_ptr), intent(out) :: out_abort
      integer(c_int32_t) :: shmex_abort_new
    end function shmex_abort_new

    function shmex_abort_trigger(abort) bind(C, name="shmex_abort_trigger")
      import :: c_ptr, c_int32_t
      type(c_ptr), value :: abort
      integer(c_int32_t) :: shmex_abort_trigger
    end function shmex_abort_trigger

    function shmex_abort_free(abort) bind(C, name="shmex_abort_free")
      import :: c_ptr, c_int32_t
      type(c_ptr), value :: abort
      integer(c_int32_t) :: shmex_abort_free
    end function shmex_abort_free

    function shmex_reply_rc(reply, out_rc) bind(C, name="shmex_reply_rc")
      import :: c_ptr, c_int32_t
      type(c_ptr), value :: reply
      integer(c_int32_t), intent(out) :: out_rc
      integer(c_int32_t) :: shmex_reply_rc
    end function shmex_reply_rc

    function shmex_reply_meta(reply, out_json) bind(C, name="shmex_reply_meta")
      import :: c_ptr, c_int32_t
      type(c_ptr), value :: reply
      type(c_ptr), intent(out) :: out_json
      integer(c_int32_t) :: shmex_reply_meta
    end function shmex_reply_meta

    function shmex_reply_tensor_count(reply, out_count) bind(C, name="shmex_reply_tensor_count")
      import :: c_ptr, c_int32_t, c_size_t
      type(c_ptr), value :: reply
      integer(c_size_t), intent(out) :: out_count
      integer(c_int32_t) :: shmex_reply_tensor_count
    end function shmex_reply_tensor_count

    function shmex_reply_tensor(reply, index, out_tensor) bind(C, name="shmex_reply_tensor")
      import :: c_ptr, c_int32_t, c_size_t, shmex_tensor
      type(c_ptr), value :: reply
      integer(c_size_t), value :: index
      type(shmex_tensor), intent(out) :: out_tensor
      integer(c_int32_t) :: shmex_reply_tensor
    end function shmex_reply_tensor

    function shmex_reply_is_in_place(reply, out_in_place) &
        bind(C, name="shmex_reply_is_in_place")
      import :: c_ptr, c_int32_t, c_bool
      type(c_ptr), value :: reply
      logical(c_bool), intent(out) :: out_in_place
      integer(c_int32_t) :: shmex_reply_is_in_place
    end function shmex_reply_is_in_place

    function shmex_agent_loan_result(agent, spec, out_loan) &
        bind(C, name="shmex_agent_loan_result")
      import :: c_ptr, c_int32_t, shmex_loan_spec
      type(c_ptr), value :: agent
      type(shmex_loan_spec), intent(in) :: spec
      type(c_ptr), intent(out) :: out_loan
      integer(c_int32_t) :: shmex_agent_loan_result
    end function shmex_agent_loan_result

    function shmex_result_loan_tensor_count(loan, out_count) &
        bind(C, name="shmex_result_loan_tensor_count")
      import :: c_ptr, c_int32_t, c_size_t
      type(c_ptr), value :: loan
      integer(c_size_t), intent(out) :: out_count
      integer(c_int32_t) :: shmex_result_loan_tensor_count
    end function shmex_result_loan_tensor_count

    ! index is 0-based, as in C
    function shmex_result_loan_tensor(loan, index, out_tensor) &
        bind(C, name="shmex_result_loan_tensor")
      import :: c_ptr, c_int32_t, c_size_t, shmex_tensor_mut
      type(c_ptr), value :: loan
      integer(c_size_t), value :: index
      type(shmex_tensor_mut), intent(out) :: out_tensor
      integer(c_int32_t) :: shmex_result_loan_tensor
    end function shmex_result_loan_tensor

    ! ends the loan (pass the handle, then forget it)
    function shmex_result_loan_commit(loan, rc, out_accepted) &
        bind(C, name="shmex_result_loan_commit")
      import :: c_ptr, c_int32_t, c_bool
      type(c_ptr), value :: loan
      integer(c_int32_t), value :: rc
      logical(c_bool), intent(out) :: out_accepted
      integer(c_int32_t) :: shmex_result_loan_commit
    end function shmex_result_loan_commit

    function shmex_result_loan_abandon(loan) bind(C, name="shmex_result_loan_abandon")
      import :: c_ptr, c_int32_t
      type(c_ptr), value :: loan
      integer(c_int32_t) :: shmex_result_loan_abandon
    end function shmex_result_loan_abandon

    ! abort: c_null_ptr, or a handle from shmex_abort_new
    function shmex_exchanger_loan_task(exchanger, task_name, headers, spec, abort, out_loan) &
        bind(C, name="shmex_exchanger_loan_task")
      import :: c_ptr, c_char, c_int32_t, shmex_headers, shmex_loan_spec
      type(c_ptr), value :: exchanger
      character(kind=c_char), intent(in) :: task_name(*)
      type(shmex_headers), intent(in) :: headers
      type(shmex_loan_spec), intent(in) :: spec
      type(c_ptr), value :: abort
      type(c_ptr), intent(out) :: out_loan
      integer(c_int32_t) :: shmex_exchanger_loan_task
    end function shmex_exchanger_loan_task

    function shmex_task_loan_tensor_count(loan, out_count) &
        bind(C, name="shmex_task_loan_tensor_count")
      import :: c_ptr, c_int32_t, c_size_t
      type(c_ptr), value :: loan
      integer(c_size_t), intent(out) :: out_count
      integer(c_int32_t) :: shmex_task_loan_tensor_count
    end function shmex_task_loan_tensor_count

    function shmex_task_loan_tensor(loan, index, out_tensor) &
        bind(C, name="shmex_task_loan_tensor")
      import :: c_ptr, c_int32_t, c_size_t, shmex_tensor_mut
      type(c_ptr), value :: loan
      integer(c_size_t), value :: index
      type(shmex_tensor_mut), intent(out) :: out_tensor
      integer(c_int32_t) :: shmex_task_loan_tensor
    end function shmex_task_loan_tensor

    ! ends the loan; out_reply is a new reply handle
    function shmex_task_loan_execute(loan, abort, out_reply) &
        bind(C, name="shmex_task_loan_execute")
      import :: c_ptr, c_int32_t
      type(c_ptr), value :: loan
      type(c_ptr), value :: abort
      type(c_ptr), intent(out) :: out_reply
      integer(c_int32_t) :: shmex_task_loan_execute
    end function shmex_task_loan_execute

    function shmex_task_loan_abandon(loan) bind(C, name="shmex_task_loan_abandon")
      import :: c_ptr, c_int32_t
      type(c_ptr), value :: loan
      integer(c_int32_t) :: shmex_task_loan_abandon
    end function shmex_task_loan_abandon

    function shmex_reply_free(reply) bind(C, name="shmex_reply_free")
      import :: c_ptr, c_int32_t
      type(c_ptr), value :: reply
      integer(c_int32_t) :: shmex_reply_free
    end function shmex_reply_free
  end interface

contains

  ! A Fortran string as a NUL-terminated C string (trailing blanks dropped).
  function shmex_c_string(s) result(c)
    character(len=*), intent(in) :: s
    character(kind=c_char, len=:), allocatable :: c
    c = trim(s) // c_null_char
  end function shmex_c_string

  ! A NUL-terminated C string shmex returned, copied into a Fortran string.
  function shmex_f_string(p) result(s)
    type(c_ptr), intent(in) :: p
    character(len=:), allocatable :: s
    character(kind=c_char), pointer :: chars(:)
    integer :: i, n
    if (.not. c_associated(p)) then
      s = ''
      return
    end if
    n = int(c_strlen(p))
    call c_f_pointer(p, chars, [n])
    allocate(character(len=n) :: s)
    do i = 1, n
      s(i:i) = chars(i)
    end do
  end function shmex_f_string

  ! The text of the calling thread's last failure.
  function shmex_error_text() result(s)
    character(len=:), allocatable :: s
    s = shmex_f_string(shmex_last_error_message())
  end function shmex_error_text

  ! The tensor's shape in Fortran order (the C extents reversed: column-major).
  function shmex_tensor_fortran_shape(t) result(extents)
    type(shmex_tensor), intent(in) :: t
    integer(c_int64_t), allocatable :: extents(:)
    integer(c_int64_t), pointer :: c_extents(:)
    allocate(extents(t%ndim))
    if (t%ndim == 0) return
    call c_f_pointer(t%shape, c_extents, [t%ndim])
    extents = c_extents(t%ndim:1:-1)
  end function shmex_tensor_fortran_shape

  ! A received f32 tensor as a rank-1 array pointer over its data in place (no copy); valid
  ! until its task or reply is freed. Null when the dtype is not f32.
  subroutine shmex_tensor_f32(t, values)
    type(shmex_tensor), intent(in) :: t
    real(c_float), pointer, intent(out) :: values(:)
    values => null()
    if (t%dtype /= SHMEX_DTYPE_F32) return
    call c_f_pointer(t%data, values, [t%len / c_sizeof(0.0_c_float)])
  end subroutine shmex_tensor_f32

  ! As shmex_tensor_f32, for f64 tensors.
  subroutine shmex_tensor_f64(t, values)
    type(shmex_tensor), intent(in) :: t
    real(c_double), pointer, intent(out) :: values(:)
    values => null()
    if (t%dtype /= SHMEX_DTYPE_F64) return
    call c_f_pointer(t%data, values, [t%len / c_sizeof(0.0_c_double)])
  end subroutine shmex_tensor_f64

  ! A loaned f32 tensor as a rank-1 array pointer over its bytes in shared memory, to be
  ! written in place (no copy); valid until the loan is committed, executed or abandoned.
  ! Null when the dtype is not f32. C order: see shmex_tensor_f32.
  subroutine shmex_loan_tensor_f32(t, values)
    type(shmex_tensor_mut), intent(in) :: t
    real(c_float), pointer, intent(out) :: values(:)
    values => null()
    if (t%dtype /= SHMEX_DTYPE_F32) return
    call c_f_pointer(t%data, values, [t%len / c_sizeof(0.0_c_float)])
  end subroutine shmex_loan_tensor_f32

  ! As shmex_loan_tensor_f32, for f64 tensors.
  subroutine shmex_loan_tensor_f64(t, values)
    type(shmex_tensor_mut), intent(in) :: t
    real(c_double), pointer, intent(out) :: values(:)
    values => null()
    if (t%dtype /= SHMEX_DTYPE_F64) return
    call c_f_pointer(t%data, values, [t%len / c_sizeof(0.0_c_double)])
  end subroutine shmex_loan_tensor_f64
end module shmex
