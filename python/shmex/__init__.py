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
    "Exchanger",
    "Reply",
    "ReturnCode",
    "ShmexError",
    "Task",
]
