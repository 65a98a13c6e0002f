"""Stubs of the compiled module ``shmex._shmex`` (private: use the ``shmex`` package)."""

from typing import Optional, Protocol

import numpy as np

SEGMENT_PREFIX: str
DEFAULT_RING_CAPACITY: int
RETURN_CODES: list[str]
DATA_KINDS: list[str]
ERROR_CODES: list[str]

class ShmexError(Exception):
    """Base class of the errors shmex raises."""

    code: Optional[str]
    """The error's code (``shmex.ErrorCode``); ``None`` for an internal error."""

class AgentClosed(ShmexError):
    """The agent is closed (FLARE's ``AgentClosed``)."""

class CallStateError(ShmexError):
    """A call made in the wrong state (FLARE's ``CallStateError``)."""

class _AbortEvent(Protocol):
    def is_set(self) -> bool: ...

_OutTensor = tuple[str, str, list[int], np.ndarray]

class _Message:
    """A received task or result; owns the memory its tensors are viewed in."""

    def in_ring(self) -> bool:
        """Whether the message is read in place in the ring (``receive_in_place``)."""
    def data_kind(self) -> Optional[str]:
        """The data kind name, or None when the message carries no DXO."""
    def meta_json(self) -> str:
        """The meta dictionary as JSON text."""
    def opaque(self) -> bytes:
        """The opaque bytes (a copy; empty when there are none)."""
    def tensors(self) -> list[tuple[str, str, list[int], int, int]]:
        """``(name, dtype, shape, address, nbytes)`` of each tensor in this object's memory."""

_SpecTensor = tuple[str, str, list[int]]

class _LoanLease:
    """Held by the base of each loaned array: keeps the loan's ring space reserved."""

class _ResultLoan:
    """A result built in place; ``shmex.ResultLoan`` wraps it."""

    def task_id(self) -> str:
        """The id of the task this result answers."""
    def tensors(self) -> list[tuple[str, str, list[int], int]]:
        """``(name, dtype, shape, nbytes)`` of each tensor, in spec order."""
    def lease(self, index: Optional[int]) -> tuple[_LoanLease, int, int]:
        """``(lease, address, nbytes)`` of tensor ``index`` (None: the opaque bytes)."""
    def leases(self) -> int:
        """Leases alive."""
    def state(self) -> str:
        """open, committed, abandoned, or abandoned (arrays alive)."""
    def commit(self, return_code: str) -> bool:
        """Sends the result; whether the exchanger accepted it."""
    def abandon(self) -> None:
        """Abandons the loan."""

class _TaskLoan:
    """A task built in place; ``shmex.TaskLoan`` wraps it."""

    def task_id(self) -> str:
        """The task id."""
    def tensors(self) -> list[tuple[str, str, list[int], int]]:
        """``(name, dtype, shape, nbytes)`` of each tensor, in spec order."""
    def lease(self, index: Optional[int]) -> tuple[_LoanLease, int, int]:
        """``(lease, address, nbytes)`` of tensor ``index`` (None: the opaque bytes)."""
    def leases(self) -> int:
        """Leases alive."""
    def state(self) -> str:
        """open, committed, abandoned, or abandoned (arrays alive)."""
    def execute(
        self, abort: Optional[_AbortEvent], timeout: Optional[float]
    ) -> tuple[str, Optional[str], Optional[_Message]]:
        """Sends the task and waits for its result: ``(rc, data_kind, message)``."""
    def abandon(self) -> None:
        """Abandons the loan."""

class _Exchanger:
    """The FL-client side; ``shmex.Exchanger`` wraps it."""

    def __init__(
        self,
        site: str,
        agent_id: str,
        send_task_timeout: float,
        resend_task_interval: float,
        agent_connection_timeout: float,
        agent_heartbeat_timeout: Optional[float],
        agent_heartbeat_interval: float,
        agent_ack_timeout: float,
        result_timeout: Optional[float],
        on_agent_restart: str,
        task_ring_capacity: int,
        result_ring_capacity: int,
        reclaim_stale: bool,
        receive_in_place: bool,
        expected_message_len: Optional[int],
    ) -> None: ...
    def name(self) -> str:
        """The segment's name."""
    def status(self) -> str:
        """The exchanger's view of the agent."""
    def redeliveries(self) -> int:
        """How many times a task was sent again to a restarted agent."""
    def execute(
        self,
        task_name: str,
        task_id: str,
        data_kind: str,
        meta_json: str,
        tensors: list[_OutTensor],
        opaque: Optional[np.ndarray],
        current_round: Optional[int],
        total_round: Optional[int],
        abort: Optional[_AbortEvent],
        timeout: Optional[float],
    ) -> tuple[str, Optional[str], Optional[_Message]]:
        """Sends a task and waits for its result: ``(rc, data_kind, message)``."""
    def task_loan(
        self,
        task_name: str,
        task_id: str,
        data_kind: str,
        meta_json: str,
        tensors: list[_SpecTensor],
        opaque_len: int,
        current_round: Optional[int],
        total_round: Optional[int],
        abort: Optional[_AbortEvent],
    ) -> _TaskLoan:
        """Lends task-ring space for a task laid out by the spec."""
    def close(self) -> None:
        """Says bye to the agent and removes the segment."""

class _Agent:
    """The trainer side; ``shmex.Agent`` wraps it."""

    def __init__(
        self,
        site: str,
        agent_id: str,
        submit_result_timeout: float,
        flare_site_connection_timeout: float,
        flare_site_heartbeat_timeout: Optional[float],
        resend_result_interval: float,
        attach_timeout: float,
        heartbeat_interval: float,
        receive_in_place: bool,
        expected_message_len: Optional[int],
    ) -> None: ...
    def status(self) -> str:
        """The agent's view of the exchanger."""
    def is_aborted(self) -> bool:
        """Whether the current task was aborted."""
    def get_task(self, timeout: Optional[float]) -> Optional[tuple[str, str, _Message]]:
        """Fetches the next task: ``(task_id, task_name, message)`` or None on timeout."""
    def submit_result(
        self,
        return_code: str,
        data_kind: str,
        meta_json: str,
        tensors: list[_OutTensor],
        opaque: Optional[np.ndarray],
    ) -> bool:
        """Submits the current task's result; returns whether it was accepted."""
    def result_loan(
        self, data_kind: str, meta_json: str, tensors: list[_SpecTensor], opaque_len: int
    ) -> _ResultLoan:
        """Lends result-ring space for the current task's result."""
    def close(self) -> None:
        """Detaches."""
