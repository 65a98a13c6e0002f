! The trainer of agent.c in Fortran 2008: checks each task's model, adds one to every weight
! (viewed in place as a Fortran array pointer), submits the result by copy, until bye.
!
!   gfortran -std=f2008 shmex.f90 agent.f90 -o agent $(pkg-config --libs shmex)
!   ./agent SITE AGENT_ID
program agent_f
  use, intrinsic :: iso_c_binding
  use shmex
  implicit none

  type :: buffer
    real(c_float), allocatable :: values(:)
  end type buffer

  character(len=256) :: site, agent_id
  character(kind=c_char), target :: meta_out(32)
  character(len=*), parameter :: meta_text = '{"NUM_STEPS_CURRENT_ROUND": 1}'
  type(c_ptr) :: agent, task, meta_ptr
  type(shmex_tensor), allocatable, target :: views(:), outs(:)
  type(buffer), allocatable, target :: updates(:)
  type(shmex_data) :: result
  real(c_float), pointer :: w(:)
  character(len=:), allocatable :: meta
  integer(c_int32_t) :: st
  integer(c_size_t) :: count, t, i
  integer :: tasks, round, at
  logical(c_bool) :: accepted

  call get_command_argument(1, site)
  call get_command_argument(2, agent_id)
  do i = 1, len(meta_text)
    meta_out(i) = meta_text(i:i)
  end do
  meta_out(len(meta_text) + 1) = c_null_char

  st = shmex_agent_attach(shmex_c_string(site), shmex_c_string(agent_id), c_null_ptr, agent)
  call check(st, 'attach')
  tasks = 0
  do
    st = shmex_agent_get_task(agent, 120000_c_int64_t, task)
    if (st == SHMEX_CLOSED) exit            ! the exchanger said bye
    call check(st, 'get_task')
    call check(shmex_task_meta(task, meta_ptr), 'meta')
    meta = shmex_f_string(meta_ptr)
    at = index(meta, '"current_round":') + len('"current_round":')
    read (meta(at:), *) round               ! list-directed: stops at ',' or '}'
    call check(shmex_task_tensor_count(task, count), 'tensor_count')
    allocate(views(count), outs(count), updates(count))
    do t = 1, count
      call check(shmex_task_tensor(task, t - 1, views(t)), 'tensor')
      call shmex_tensor_f32(views(t), w)    ! in place; C order, so 1-D is the same order
      if (.not. associated(w)) stop 'agent.f90: a tensor is not f32'
      do i = 1, size(w, kind=c_size_t)
        ! exact: every value of the contract is a float without rounding
        if (abs(w(i) - (real(mod(i - 1, 1000_c_size_t), c_float) * 0.5 + real(round, c_float))) &
            > 0.0_c_float) then
          stop 'agent.f90: a tensor is not the model'
        end if
      end do
      updates(t)%values = w + 1.0_c_float   ! the "training"
      outs(t) = views(t)                    ! same name, dtype, shape ...
      outs(t)%data = c_loc(updates(t)%values) ! ... new values
    end do
    result%data_kind = SHMEX_DATA_KIND_WEIGHTS
    result%meta_json = c_loc(meta_out)
    result%tensors = c_loc(outs)
    result%tensor_count = count
    call check(shmex_agent_submit_result(agent, result, SHMEX_RC_OK, accepted), 'submit')
    if (.not. accepted) stop 'agent.f90: result not accepted'
    call check(shmex_task_free(task), 'task_free')
    deallocate(views, outs, updates)
    tasks = tasks + 1
  end do
  call check(shmex_agent_free(agent), 'agent_free')
  print '(a, i0, a)', 'Fortran agent: ', tasks, ' tasks checked and answered'

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
