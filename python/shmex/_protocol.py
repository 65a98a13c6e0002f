"""``Exchanger`` and ``Agent``: FLARE's IPCExchanger/IPCAgent protocol over shared memory."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Optional, Protocol

import numpy as np

from . import _loans, _shmex, _tensors
from ._loans import ResultLoan, TaskLoan, TensorSpecs
from ._shmex import AgentClosed
from ._tensors import Data, ReceivedData


class AbortEvent(Protocol):
    """What ``Exchanger.execute`` accepts as ``abort``: ``threading.Event`` or alike."""

    def is_set(self) -> bool:
        """Whether the task should be aborted."""
        ...


def _check_str(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _check_seconds(what: str, value: object, optional: bool = False) -> Optional[float]:
    """A duration in seconds: a number >= 0 (``None`` or ``inf`` = no limit when optional)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, got {type(value).__name__}")
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0 or (math.isinf(seconds) and not optional):
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return seconds


def _seconds(what: str, value: object) -> float:
    """A required duration in seconds: a finite number >= 0."""
    seconds = _check_seconds(what, value)
    assert seconds is not None
    return seconds


def _check_round(what: str, value: object) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    return int(value)


def _check_length(what: str, value: object) -> Optional[int]:
    """A byte count (an ``int`` >= 0) or ``None``; checked."""
    length = _check_round(what, value)
    if length is not None and length < 0:
        raise ValueError(f"{what} must be >= 0, got {length}")
    return length


def _check_abort(abort: object) -> None:
    if abort is not None and not callable(getattr(abort, "is_set", None)):
        raise TypeError("abort must have an is_set() method (e.g. threading.Event)")


def _data_kind_of(meta: object, data_kind: Optional[str], default: str) -> str:
    """``data_kind``, else meta ``data_kind``, else ``default``; checked."""
    if data_kind is None and isinstance(meta, Mapping):
        kind = meta.get("data_kind")
        data_kind = kind if isinstance(kind, str) else None
    return _tensors.check_data_kind(default if data_kind is None else data_kind)


def _check_return_code(return_code: object) -> str:
    _check_str("return_code", return_code)
    assert isinstance(return_code, str)
    if return_code not in _shmex.RETURN_CODES:
        raise ValueError(f"unknown return code {return_code!r} (one of {_shmex.RETURN_CODES})")
    return return_code


class Reply:
    """What :meth:`Exchanger.execute` returns: FLARE's return code and the agent's result.

    ``data`` and ``meta`` are those of the result (``None`` and ``{}`` for a bare reply such
    as ``TASK_ABORTED``); tensors are read-only arrays viewing the received message, valid as
    long as any of them is referenced.
    """

    __slots__ = ("data", "data_kind", "dtypes", "in_place", "meta", "rc", "task_id")

    def __init__(
        self,
        rc: str,
        task_id: str,
        data_kind: Optional[str],
        data: Optional[ReceivedData],
        meta: dict[str, Any],
        dtypes: dict[str, str],
        in_place: bool = False,
    ) -> None:
        """A reply; made by :meth:`Exchanger.execute`."""
        self.rc = rc
        """FLARE's return code (``"OK"``, ``"TASK_ABORTED"``, ...; see :class:`ReturnCode`)."""
        self.task_id = task_id
        """The id of the task this replies to."""
        self.data_kind = data_kind
        """The result's data kind (``None`` for a bare reply)."""
        self.data = data
        """Named arrays (views of the message), opaque bytes, or ``None`` (bare reply)."""
        self.meta = meta
        """The result's meta dict."""
        self.dtypes = dtypes
        """Each tensor's shmex dtype name (``"f32"``, ``"bf16"``, ...)."""
        self.in_place = in_place
        """Whether the arrays view the result where the agent wrote it, in the result ring
        (``receive_in_place``): its ring space is held until every array is gone."""

    @property
    def ok(self) -> bool:
        """Whether ``rc`` is ``OK``."""
        return self.rc == "OK"

    def __repr__(self) -> str:
        """A short description."""
        tensors = len(self.data) if isinstance(self.data, dict) else None
        return f"Reply(rc={self.rc!r}, data_kind={self.data_kind!r}, tensors={tensors})"


def _reply(
    rc: str, task_id: str, result_kind: Optional[str], message: Optional[_shmex._Message]
) -> Reply:
    """The :class:`Reply` of an ``execute``: bare when no result message came."""
    if message is None:
        return Reply(rc, task_id, result_kind, None, {}, {})
    received, dtypes = _tensors.incoming(message)
    meta = _tensors.meta_of(message)
    return Reply(rc, task_id, result_kind, received, meta, dtypes, message.in_ring())


class Exchanger:
    """The FL-client side (FLARE's ``IPCExchanger``): creates the link, sends tasks, waits.

    The link is the shared-memory segment ``/dev/shm/shmex.<site>.<agent_id>``; it is removed
    by :meth:`close` (or leaving the ``with`` block), which also tells the agent ``bye``.
    Options keep FLARE's names and defaults; ``result_timeout``, ``on_agent_restart``, the
    ring capacities and ``reclaim_stale`` are shmex's own. ``send_task_timeout``,
    ``resend_task_interval`` are accepted for FLARE parity and not needed (the ring is
    lossless). An instance may be shared between threads; one task is in flight at a time.
    """

    def __init__(
        self,
        site: str,
        agent_id: str,
        *,
        send_task_timeout: float = 5.0,
        resend_task_interval: float = 2.0,
        agent_connection_timeout: float = 60.0,
        agent_heartbeat_timeout: Optional[float] = None,
        agent_heartbeat_interval: float = 5.0,
        agent_ack_timeout: float = 5.0,
        result_timeout: Optional[float] = None,
        on_agent_restart: str = "redeliver",
        task_ring_capacity: int = _shmex.DEFAULT_RING_CAPACITY,
        result_ring_capacity: int = _shmex.DEFAULT_RING_CAPACITY,
        reclaim_stale: bool = True,
        receive_in_place: bool = False,
        expected_message_len: Optional[int] = None,
    ) -> None:
        """Creates the link and starts serving it.

        ``agent_heartbeat_timeout``: the agent's silence after which the exchanger stops
        (off by default, as FLARE). ``result_timeout``: longest wait for a result after the
        task is sent (``None``: forever, as FLARE). ``on_agent_restart``: ``"redeliver"``
        the in-flight task to a restarted agent, or ``"fail"`` it. ``receive_in_place``: a
        result that fits whole in the result ring is viewed where the agent wrote it, not
        copied (zero copies with a result loan; ``Reply.in_place``); its ring space stays
        taken until every array of the reply is gone, so drop a reply before the next
        result can arrive, or give the result ring room for two (see the README).
        ``expected_message_len``: the largest result's bytes, if known: its receive buffer
        is mapped and faulted in now, so that no round pays for fresh memory. Raises
        ``ShmexError`` when the segment cannot be created (e.g. a live exchanger already
        owns it).
        """
        self._core = _shmex._Exchanger(
            _check_str("site", site),
            _check_str("agent_id", agent_id),
            _seconds("send_task_timeout", send_task_timeout),
            _seconds("resend_task_interval", resend_task_interval),
            _seconds("agent_connection_timeout", agent_connection_timeout),
            _check_seconds("agent_heartbeat_timeout", agent_heartbeat_timeout, optional=True),
            _seconds("agent_heartbeat_interval", agent_heartbeat_interval),
            _seconds("agent_ack_timeout", agent_ack_timeout),
            _check_seconds("result_timeout", result_timeout, optional=True),
            _check_str("on_agent_restart", on_agent_restart),
            int(task_ring_capacity),
            int(result_ring_capacity),
            bool(reclaim_stale),
            bool(receive_in_place),
            _check_length("expected_message_len", expected_message_len),
        )

    @property
    def name(self) -> str:
        """The segment's name (``shmex.<site>.<agent_id>``)."""
        return self._core.name()

    @property
    def status(self) -> str:
        """The agent as seen from here: no_agent, connected, disconnected, stopped, closed."""
        return self._core.status()

    @property
    def redeliveries(self) -> int:
        """How many times a task was sent again to a restarted agent."""
        return self._core.redeliveries()

    def execute(
        self,
        task_name: str,
        data: Data,
        meta: Optional[Mapping[str, Any]] = None,
        *,
        data_kind: Optional[str] = None,
        task_id: Optional[str] = None,
        current_round: Optional[int] = None,
        total_round: Optional[int] = None,
        abort: Optional[AbortEvent] = None,
        timeout: Optional[float] = None,
    ) -> Reply:
        """Sends a task to the agent and waits for its result.

        ``data``: a dict of arrays (sent with one copy each, into shared memory; arrays that
        are not C-contiguous or not in native byte order are converted first) or opaque
        ``bytes`` (data kind APP_DEFINED). ``meta``: a JSON-able dict; ``data_kind``,
        ``current_round`` and ``total_round`` are added to it as FLARE does. ``task_id``:
        a fresh UUID by default. ``abort``: an object with ``is_set()`` (``threading.Event``),
        looked at about every 20 ms; when set, the agent is told to abort and the reply is
        ``TASK_ABORTED``. ``timeout``: seconds until the task is aborted with ``TIMEOUT``.

        Bad arguments raise ``TypeError``/``ValueError`` before anything is sent; protocol
        outcomes are return codes (``BAD_REQUEST_DATA`` for a second concurrent call or no
        data, ``TASK_ABORTED`` after close, ...). The GIL is released while waiting; Ctrl-C
        aborts the task and raises ``KeyboardInterrupt``. Do not write to the arrays from
        another thread while they are being sent.
        """
        _check_str("task_name", task_name)
        task_id = str(uuid.uuid4()) if task_id is None else _check_str("task_id", task_id)
        kind, tensors, opaque = _tensors.outgoing(data, data_kind)
        meta_text = _tensors.meta_json(meta)
        rounds = (
            _check_round("current_round", current_round),
            _check_round("total_round", total_round),
        )
        seconds = _check_seconds("timeout", timeout, optional=True)
        _check_abort(abort)
        rc, result_kind, message = self._core.execute(
            task_name,
            task_id,
            kind,
            meta_text,
            tensors,
            opaque,
            rounds[0],
            rounds[1],
            abort,
            seconds,
        )
        return _reply(rc, task_id, result_kind, message)

    def task_loan(
        self,
        task_name: str,
        tensors: Optional[TensorSpecs],
        meta: Optional[Mapping[str, Any]] = None,
        *,
        data_kind: Optional[str] = None,
        opaque: int = 0,
        task_id: Optional[str] = None,
        current_round: Optional[int] = None,
        total_round: Optional[int] = None,
        abort: Optional[AbortEvent] = None,
    ) -> TaskLoan:
        """Lends task-ring space for a task, to be filled in place and sent with no copy.

        ``tensors``: names mapped to ``(shape, dtype)`` (a numpy dtype, or a shmex dtype
        name such as ``"bf16"``); ``opaque``: bytes to reserve (data kind APP_DEFINED).
        ``meta``, ``data_kind`` (default ``WEIGHTS``, or ``APP_DEFINED`` with only opaque
        bytes), ``task_id``, the rounds and ``abort`` as for :meth:`execute`. The task must
        fit in one record of the task ring. Fill ``loan[name]`` (or ``loan.arrays``), then
        ``loan.execute()`` → :class:`Reply`::

            with ex.task_loan("train", {"w": ((1024,), np.float32)}) as loan:
                loan["w"][...] = weights
                reply = loan.execute()

        The task is in flight from here on. Raises ``TypeError``/``ValueError`` for a bad
        spec, and :class:`ShmexError` with ``code`` and ``rc`` (the return code ``execute``
        would give) when nothing can be lent: ``CALL_STATE``/``BAD_REQUEST_DATA`` while a
        task is in flight, ``CLOSED``/``TASK_ABORTED`` after :meth:`close`. Waits (GIL
        released, Ctrl-C raises ``KeyboardInterrupt``) only while the ring is full of
        messages the agent has not read. See :class:`TaskLoan` for the array rules.
        """
        _check_str("task_name", task_name)
        task_id = str(uuid.uuid4()) if task_id is None else _check_str("task_id", task_id)
        specs, opaque_len = _loans.specs(tensors, opaque)
        default = "APP_DEFINED" if opaque_len and not specs else "WEIGHTS"
        kind = _tensors.check_data_kind(default if data_kind is None else data_kind)
        meta_text = _tensors.meta_json(meta)
        rounds = (
            _check_round("current_round", current_round),
            _check_round("total_round", total_round),
        )
        _check_abort(abort)
        core = self._core.task_loan(
            task_name, task_id, kind, meta_text, specs, opaque_len, rounds[0], rounds[1], abort
        )
        return TaskLoan(core)

    def close(self) -> None:
        """Tells the agent ``bye`` and removes the segment.

        A running or later ``execute`` returns ``TASK_ABORTED``. Calling it again does
        nothing. Received arrays stay valid.
        """
        self._core.close()

    def __enter__(self) -> Exchanger:
        """Returns the exchanger."""
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        """Closes the exchanger."""
        self.close()

    def __repr__(self) -> str:
        """A short description."""
        return f"Exchanger(name={self.name!r}, status={self.status!r})"


class Task:
    """A task handed out by :meth:`Agent.get_task` (FLARE's ``Task``: name, id, meta, data).

    Tensors are read-only numpy arrays viewing the received message's memory (no copy); they
    stay valid, also after the next task arrives or the agent is closed, for as long as any of
    them is referenced. Copy an array (``arr.copy()``) to modify it in place.
    """

    __slots__ = (
        "_agent",
        "data",
        "data_kind",
        "dtypes",
        "in_place",
        "meta",
        "task_id",
        "task_name",
    )

    def __init__(
        self,
        agent: Agent,
        task_id: str,
        task_name: str,
        data_kind: Optional[str],
        data: ReceivedData,
        meta: dict[str, Any],
        dtypes: dict[str, str],
        in_place: bool = False,
    ) -> None:
        """A task; made by :meth:`Agent.get_task`."""
        self._agent: Optional[Agent] = agent
        self.task_id = task_id
        """The task id."""
        self.task_name = task_name
        """The task name (e.g. ``train``)."""
        self.data_kind = data_kind
        """The task's data kind (``WEIGHTS``, ``APP_DEFINED``, ...)."""
        self.data = data
        """Named read-only arrays viewing the message, or opaque bytes (APP_DEFINED)."""
        self.meta = meta
        """The task's meta (with ``current_round``, ``total_round``, ``data_kind``)."""
        self.dtypes = dtypes
        """Each tensor's shmex dtype name (``"f32"``, ``"bf16"``, ...)."""
        self.in_place = in_place
        """Whether the arrays view the task where the exchanger wrote it, in the task ring
        (``receive_in_place``): its ring space is held until every array is gone."""

    @property
    def current_round(self) -> Optional[int]:
        """Meta ``current_round``, if present."""
        value = self.meta.get("current_round")
        return value if isinstance(value, int) else None

    @property
    def total_round(self) -> Optional[int]:
        """Meta ``total_round``, if present."""
        value = self.meta.get("total_round")
        return value if isinstance(value, int) else None

    @property
    def aborted(self) -> bool:
        """Whether the exchanger aborted this task (while it is the agent's current task)."""
        return self._agent is not None and self._agent._core.is_aborted()

    def _answered(self) -> None:
        self._agent = None

    def __repr__(self) -> str:
        """A short description."""
        return f"Task(task_name={self.task_name!r}, task_id={self.task_id!r})"


class Agent:
    """The trainer side (FLARE's ``IPCAgent``): fetches tasks and submits results.

    Waits up to ``attach_timeout`` for the exchanger of ``shmex.<site>.<agent_id>`` to appear.
    Options keep FLARE's names and defaults; ``attach_timeout`` and ``heartbeat_interval`` are
    shmex's own; ``resend_result_interval`` is accepted for FLARE parity and not needed. When
    the exchanger's process dies, the agent waits for a new one on the same name.
    """

    def __init__(
        self,
        site: str,
        agent_id: str,
        *,
        submit_result_timeout: float = 30.0,
        flare_site_connection_timeout: float = 60.0,
        flare_site_heartbeat_timeout: Optional[float] = None,
        resend_result_interval: float = 2.0,
        attach_timeout: float = 60.0,
        heartbeat_interval: float = 5.0,
        receive_in_place: bool = False,
        expected_message_len: Optional[int] = None,
    ) -> None:
        """Attaches (the GIL is released while waiting; Ctrl-C raises ``KeyboardInterrupt``).

        ``receive_in_place``: a task that fits whole in the task ring is viewed where the
        exchanger wrote it, not copied (``Task.in_place``); its ring space stays taken until
        every array of the task is gone, so ``del task`` (and its arrays) before waiting for
        the next one, or give the task ring room for two (see the README).
        ``expected_message_len``: the largest task's bytes, if known: its receive buffer is
        mapped and faulted in now, so that no round pays for fresh memory. Raises
        ``ShmexError`` when no exchanger appears within ``attach_timeout`` or another agent
        is attached.
        """
        self._current: Optional[Task] = None
        self._core = _shmex._Agent(
            _check_str("site", site),
            _check_str("agent_id", agent_id),
            _seconds("submit_result_timeout", submit_result_timeout),
            _seconds("flare_site_connection_timeout", flare_site_connection_timeout),
            _check_seconds(
                "flare_site_heartbeat_timeout", flare_site_heartbeat_timeout, optional=True
            ),
            _seconds("resend_result_interval", resend_result_interval),
            _seconds("attach_timeout", attach_timeout),
            _seconds("heartbeat_interval", heartbeat_interval),
            bool(receive_in_place),
            _check_length("expected_message_len", expected_message_len),
        )

    @property
    def status(self) -> str:
        """The exchanger as seen from here: connected, disconnected, lost, closed."""
        return self._core.status()

    @property
    def is_aborted(self) -> bool:
        """Whether the current task was aborted (a trainer may poll this and stop early)."""
        return self._core.is_aborted()

    def get_task(self, timeout: Optional[float] = None) -> Optional[Task]:
        """The next task, waiting up to ``timeout`` seconds (``None``: forever).

        Returns ``None`` on timeout. Raises :class:`AgentClosed` after ``bye`` or
        :meth:`close`, and :class:`CallStateError` while the previous task's result is not
        submitted. Aborted tasks are skipped. The GIL is released while waiting; Ctrl-C
        raises ``KeyboardInterrupt`` (no task is lost: it stays queued).
        """
        seconds = _check_seconds("timeout", timeout, optional=True)
        got = self._core.get_task(seconds)
        if got is None:
            return None
        task_id, task_name, message = got
        received, dtypes = _tensors.incoming(message)
        task = Task(
            self,
            task_id,
            task_name,
            message.data_kind(),
            received,
            _tensors.meta_of(message),
            dtypes,
            message.in_ring(),
        )
        self._current = task
        return task

    def submit_result(
        self,
        data: Data,
        meta: Optional[Mapping[str, Any]] = None,
        return_code: str = "OK",
        *,
        data_kind: Optional[str] = None,
    ) -> bool:
        """Submits the result of the fetched task; returns whether the exchanger accepted it.

        ``data``/``meta`` as for :meth:`Exchanger.execute`; ``data_kind`` defaults to meta
        ``data_kind``, else ``WEIGHTS`` (``APP_DEFINED`` for bytes). ``False`` when the task
        was aborted, never fetched, or already answered. Raises :class:`AgentClosed` when the
        agent is closed; bad arguments raise ``TypeError``/``ValueError`` before anything is
        sent. Ctrl-C raises ``KeyboardInterrupt``: a result still waiting for ring space is not
        sent (the task can be answered again); one already in the ring stays sent and answers
        the task.
        """
        rc = _check_return_code(return_code)
        if data_kind is None and isinstance(meta, Mapping):
            kind = meta.get("data_kind")
            data_kind = kind if isinstance(kind, str) else None
        kind, tensors, opaque = _tensors.outgoing(data, data_kind)
        meta_text = _tensors.meta_json(meta)
        try:
            return self._core.submit_result(rc, kind, meta_text, tensors, opaque)
        finally:
            self._answered()

    def result_loan(
        self,
        tensors: Optional[TensorSpecs],
        meta: Optional[Mapping[str, Any]] = None,
        *,
        data_kind: Optional[str] = None,
        opaque: int = 0,
    ) -> ResultLoan:
        """Lends result-ring space for the fetched task's result, filled in place (no copy).

        ``tensors``: names mapped to ``(shape, dtype)`` (a numpy dtype, or a shmex dtype
        name such as ``"bf16"``); ``opaque``: bytes to reserve (APP_DEFINED). ``meta`` and
        ``data_kind`` as for :meth:`submit_result`. The result must fit in one record of the
        result ring. Fill ``loan[name]`` (or ``loan.arrays``), then ``loan.commit(rc)``::

            with agent.result_loan({"w": (task.data["w"].shape, np.float32)}) as loan:
                np.multiply(task.data["w"], 2, out=loan["w"])
                accepted = loan.commit()

        Raises ``TypeError``/``ValueError`` for a bad spec; :class:`CallStateError`
        (``code`` ``CALL_STATE``) where :meth:`submit_result` would return ``False`` (no
        task to answer, already answered, aborted) or while another loan is outstanding;
        :class:`AgentClosed` when closed. Waits for ring space with the GIL released (Ctrl-C
        raises ``KeyboardInterrupt``). See :class:`ResultLoan` for the array rules.
        """
        specs, opaque_len = _loans.specs(tensors, opaque)
        default = "APP_DEFINED" if opaque_len and not specs else "WEIGHTS"
        kind = _data_kind_of(meta, data_kind, default)
        meta_text = _tensors.meta_json(meta)
        core = self._core.result_loan(kind, meta_text, specs, opaque_len)
        return ResultLoan(core, self._answered)

    def _answered(self) -> None:
        if self._current is not None:
            self._current._answered()
            self._current = None

    def close(self) -> None:
        """Detaches; later calls raise :class:`AgentClosed`. Received arrays stay valid."""
        self._core.close()

    def __enter__(self) -> Agent:
        """Returns the agent."""
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        """Closes the agent."""
        self.close()

    def __repr__(self) -> str:
        """A short description."""
        return f"Agent(status={self.status!r})"


__all__ = [
    "AbortEvent",
    "Agent",
    "AgentClosed",
    "Exchanger",
    "Reply",
    "ResultLoan",
    "Task",
    "TaskLoan",
]
