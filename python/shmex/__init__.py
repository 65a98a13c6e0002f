"""shmex: tasks and tensors between two processes on one host through shared memory.

NVIDIA FLARE's IPCExchanger/IPCAgent protocol without sockets: an :class:`Exchanger` (the FL
client) sends a task, an :class:`Agent` (the trainer) fetches it, computes, and submits the
result. Tensors are numpy arrays: sent with one copy (into shared memory), received without
any (read-only arrays viewing the received message).

>>> import numpy as np, shmex                                  # doctest: +SKIP
>>> with shmex.Exchanger("site-1", "trainer-0") as ex:         # doctest: +SKIP
...     reply = ex.execute("train", {"w": np.ones(4, np.float32)}, {"lr": 0.1})

Return codes and data kinds are FLARE's strings (:class:`ReturnCode`, :class:`DataKind`);
errors derive from :class:`ShmexError`, with FLARE's :class:`AgentClosed` and
:class:`CallStateError`.
"""

from __future__ import annotations

from ._loans import ResultLoan, TaskLoan
from ._protocol import AbortEvent, Agent, Exchanger, Reply, Task
from ._shmex import AgentClosed, CallStateError, ShmexError
from ._tensors import BF16, MAX_DIMS

__version__ = "0.1.0"


class ReturnCode:
    """FLARE's return codes (``nvflare.apis.fl_constant.ReturnCode``), as strings."""

    OK = "OK"
    BAD_PEER_CONTEXT = "BAD_PEER_CONTEXT"
    BAD_REQUEST_DATA = "BAD_REQUEST_DATA"
    BAD_TASK_DATA = "BAD_TASK_DATA"
    COMMUNICATION_ERROR = "COMMUNICATION_ERROR"
    TIMEOUT = "TIMEOUT"
    ERROR = "ERROR"
    EXECUTION_EXCEPTION = "EXECUTION_EXCEPTION"
    EXECUTION_RESULT_ERROR = "EXECUTION_RESULT_ERROR"
    HANDLER_EXCEPTION = "HANDLER_EXCEPTION"
    MISSING_PEER_CONTEXT = "MISSING_PEER_CONTEXT"
    RUN_MISMATCH = "RUN_MISMATCH"
    TASK_ABORTED = "TASK_ABORTED"
    TASK_DATA_FILTER_ERROR = "TASK_DATA_FILTER_ERROR"
    TASK_RESULT_FILTER_ERROR = "TASK_RESULT_FILTER_ERROR"
    TASK_UNKNOWN = "TASK_UNKNOWN"
    TASK_UNSUPPORTED = "TASK_UNSUPPORTED"
    TOPIC_UNKNOWN = "TOPIC_UNKNOWN"
    MODEL_UNRECOGNIZED = "MODEL_UNRECOGNIZED"
    VALIDATE_TYPE_UNKNOWN = "VALIDATE_TYPE_UNKNOWN"
    EMPTY_RESULT = "EMPTY_RESULT"
    UNSAFE_JOB = "UNSAFE_JOB"
    EARLY_TERMINATION = "EARLY_TERMINATION"
    SERVER_NOT_READY = "SERVER_NOT_READY"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"


class ErrorCode:
    """The ``code`` of the errors the compiled core raises, as strings (``err.code``).

    Every exception raised by the core (:class:`ShmexError` and its subclasses, and the
    ``ValueError``/``TypeError`` it raises for invalid data or options) carries one of these
    in ``code``; ``ShmexError.code`` is ``None`` only for an internal error (a bug).
    Argument checks done in Python before the core is called raise plain
    ``TypeError``/``ValueError`` without ``code``.
    """

    TIMEOUT = "TIMEOUT"
    """A deadline or timeout passed."""
    CLOSED = "CLOSED"
    """The other side closed (bye, detached), or this object was closed."""
    PEER_DEAD = "PEER_DEAD"
    """The other side's process died."""
    CORRUPT = "CORRUPT"
    """Shared memory holds values no shmex process writes."""
    MALFORMED = "MALFORMED"
    """A message the peer sent is malformed."""
    OVER_LIMIT = "OVER_LIMIT"
    """A received message exceeds one of the receiver's limits."""
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    """This process could not allocate memory."""
    BUFFER_TOO_SMALL = "BUFFER_TOO_SMALL"
    """A buffer the caller gave is too small."""
    TOO_LARGE = "TOO_LARGE"
    """Something to send does not fit (the wire format, or one ring record for a loan)."""
    CANCELLED = "CANCELLED"
    """The operation was cancelled by the caller (abort)."""
    INVALID_DATA = "INVALID_DATA"
    """A tensor, DXO, meta, dtype or return code the caller gave is invalid."""
    NO_SUCH_TENSOR = "NO_SUCH_TENSOR"
    """No tensor has the index or name asked for."""
    WRONG_DTYPE = "WRONG_DTYPE"
    """A tensor's dtype is not the one asked for."""
    MISALIGNED = "MISALIGNED"
    """Tensor bytes are not aligned for, or not a whole number of, the element type."""
    INVALID_BOOL = "INVALID_BOOL"
    """A bool tensor holds a byte other than 0 or 1."""
    CALL_STATE = "CALL_STATE"
    """A call made in the wrong state (get_task twice, a loan committed twice or with live
    arrays, a submission while a loan is outstanding)."""
    ALREADY_EXISTS = "ALREADY_EXISTS"
    """A segment of this name exists already."""
    NOT_FOUND = "NOT_FOUND"
    """No segment of this name exists."""
    PERMISSION_DENIED = "PERMISSION_DENIED"
    """The OS refused access, or the segment belongs to someone else."""
    NO_SPACE = "NO_SPACE"
    """``/dev/shm`` or memory cannot hold the segment."""
    INVALID_NAME = "INVALID_NAME"
    """A segment, site or agent name is invalid."""
    VERSION_MISMATCH = "VERSION_MISMATCH"
    """The segment was made by another layout or format version."""
    IN_USE = "IN_USE"
    """The role (or the name) is held by another live process."""
    INVALID_CONFIG = "INVALID_CONFIG"
    """An option is invalid (a timeout, a ring capacity, a policy)."""
    OS = "OS"
    """An OS call failed in another way (the text names the call and the errno)."""


class DataKind:
    """FLARE's DXO data kinds (``nvflare.apis.dxo.DataKind``), as strings."""

    FL_MODEL = "FL_MODEL"
    WEIGHTS = "WEIGHTS"
    WEIGHT_DIFF = "WEIGHT_DIFF"
    METRICS = "METRICS"
    ANALYTIC = "ANALYTIC"
    COLLECTION = "COLLECTION"
    STATISTICS = "STATISTICS"
    PSI = "PSI"
    APP_DEFINED = "APP_DEFINED"


__all__ = [
    "BF16",
    "MAX_DIMS",
    "AbortEvent",
    "Agent",
    "AgentClosed",
    "CallStateError",
    "DataKind",
    "ErrorCode",
    "Exchanger",
    "Reply",
    "ResultLoan",
    "ReturnCode",
    "ShmexError",
    "Task",
    "TaskLoan",
]
