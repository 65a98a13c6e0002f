! The trainer of agent.c in Fortran 2008: checks each task's model (viewed in place as a
! Fortran array pointer), writes every weight plus one straight into a loan of shared memory
! (another array pointer) and commits it, until bye. With receive_in_place on, a task that
! arrived whole is read where it lies in the task ring (no copy on either side when the
! exchanger sent it by loan): its ring space is taken until shmex_task_free, which comes
! before the next shmex_agent_get_task.
!
!   gfortran -std=f2008 shmex.f90 agent.f90 -o agent $(pkg-config --libs shmex)
!   ./agent SITE AGENT_ID [in-place]
! With "in-place", every task must have been read in place (tests/run.sh: models that fit in
! the ring with SHMEX_IN_PLACE_KEEP_FREE to spare).
program agent_f
  use, intrinsic :: iso_c_binding
  use shmex
  implicit none

  character(len=256) :: site, agent_id, mode
  type(shmex_agent_options), target :: options
  character(kind=c_char), target :: meta_out(32)
  character(len=*), parameter :: meta_text = '{"NUM_STEPS_CURRENT_ROUND": 1}'
  type(c_ptr) :: agent, task, meta_ptr
  type(c_ptr) :: loan
  type(shmex_tensor), allocatable :: views(:)
  type(shmex_tensor_spec), allocatable, target :: layout(:)
  type(shmex_tensor_mut) :: out
  type(shmex_loan_spec) :: spec
  real(c_float), pointer :: w(:), updated(:)
  character(len=:), allocatable :: meta
  integer(c_int32_t) :: st
  integer(c_size_t) :: count, t, i
  integer :: tasks, in_place_tasks, round, at
  logical(c_bool) :: accepted, in_place

  call get_command_argument(1, site)
  call get_command_argument(2, agent_id)
  call get_command_argument(3, mode)
  do i = 1, len(meta_text)
    meta_out(i) = meta_text(i:i)
  end do
  meta_out(len(meta_text) + 1) = c_null_char

  call check(shmex_agent_options_default(options), 'options_default')
  options%receive_in_place = 1              ! no copy of a task that fits in the ring
  st = shmex_agent_attach(shmex_c_string(site), shmex_c_string(agent_id), c_loc(options), agent)
  call check(st, 'attach')
  tasks = 0
  in_place_tasks = 0
  do
    st = shmex_agent_get_task(agent, 120000_c_int64_t, task)
    if (st == SHMEX_CLOSED) exit            ! the exchanger said bye
    call check(st, 'get_task')
    call check(shmex_task_meta(task, meta_ptr), 'meta')
    meta = shmex_f_string(meta_ptr)
    at = index(meta, '"current_round":') + len('"current_round":')
    read (meta(at:), *) round               ! list-directed: stops at ',' or '}'
    call check(shmex_task_is_in_place(task, in_place), 'is_in_place')
    if (in_place) then
      in_place_tasks = in_place_tasks + 1
    else if (mode == 'in-place') then
      error stop 'agent.f90: a task was not read in place'
    end if
    call check(shmex_task_tensor_count(task, count), 'tensor_count')
    allocate(views(count), layout(count))
    do t = 1, count                         ! the result has the task's names and shapes
      call check(shmex_task_tensor(task, t - 1, views(t)), 'tensor')
      layout(t) = shmex_tensor_spec(views(t)%name, views(t)%dtype, views(t)%ndim, views(t)%shape)
    end do
    spec%data_kind = SHMEX_DATA_KIND_WEIGHTS
    spec%meta_json = c_loc(meta_out)
    spec%tensors = c_loc(layout)
    spec%tensor_count = count
    call check(shmex_agent_loan_result(agent, spec, loan), 'loan_result')
    do t = 1, count
      call shmex_tensor_f32(views(t), w)    ! in place; C order, so 1-D is the same order
      if (.not. associated(w)) error stop 'agent.f90: a tensor is not f32'
      call check(shmex_result_loan_tensor(loan, t - 1, out), 'loan tensor')
      call shmex_loan_tensor_f32(out, updated) ! shared memory, until commit
      do i = 1, size(w, kind=c_size_t)
        ! exact: every value of the contract is a float without rounding
        if (abs(w(i) - (real(mod(i - 1, 1000_c_size_t), c_float) * 0.5 + real(round, c_float))) &
            > 0.0_c_float) then
          error stop 'agent.f90: a tensor is not the model'
        end if
      end do
      updated = w + 1.0_c_float             ! the "training", written in place
    end do
    call check(shmex_result_loan_commit(loan, SHMEX_RC_OK, accepted), 'commit') ! ends the loan
    if (.not. accepted) error stop 'agent.f90: result not accepted'
    call check(shmex_task_free(task), 'task_free') ! frees its ring space for the next task
    deallocate(views, layout)
    tasks = tasks + 1
  end do
  call check(shmex_agent_free(agent), 'agent_free')
  print '(a, i0, a, i0, a)', 'Fortran agent: ', tasks, ' tasks checked and answered, ', &
    in_place_tasks, ' read in place'

contains

  subroutine check(status, what)
    integer(c_int32_t), intent(in) :: status
    character(len=*), intent(in) :: what
    if (status /= SHMEX_OK) then
      write (*, '(a, a, a, a, a, a)') 'agent.f90: ', what, ': ', &
        shmex_f_string(shmex_status_name(status)), ': ', shmex_error_text()
      error stop 1
    end if
  end subroutine check
end program agent_f
