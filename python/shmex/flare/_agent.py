"""``IPCAgent``: FLARE 2.9's trainer-side agent (``nvflare.client.ipc.ipc_agent``) over shmex.

Same constructor, ``start``/``stop``/``get_task``/``submit_result``, ``Task`` and
``TaskResult`` as FLARE's, so a trainer written for FLARE's IPCAgent runs by changing its
import. The link is the shared-memory segment ``shmex.<flare_site_name>.<agent_id>`` that
``ShmexExchanger`` creates; there is no cell, URL, or serialization.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional

from .. import _protocol
from .._protocol import Agent
from .._shmex import AgentClosed, CallStateError
from ._common import as_tensors, link_names

_log = logging.getLogger(__name__)


class Task:
    """A task from the FLARE site (FLARE's ``nvflare.client.ipc.defs.Task``).

    ``data`` is a dict of read-only numpy arrays viewing the received message (no copy), or
    bytes for APP_DEFINED; ``meta`` carries ``data_kind``, ``current_round`` and
    ``total_round``. ``aborted`` turns true when the FLARE site aborts the task.
    """

    NEW = 0
    """Status: received, not fetched."""
    FETCHED = 1
    """Status: handed out by ``get_task``."""
    PROCESSED = 2
    """Status: its result was submitted."""

    def __init__(self, task_name: str, task_id: str, meta: dict[str, Any], data: Any) -> None:
        """A task with FLARE's fields."""
        self.task_name = task_name
        """The task name (e.g. ``train``)."""
        self.task_id = task_id
        """The task id."""
        self.meta = meta
        """The task's meta dict."""
        self.data = data
        """The task's data: named arrays (views of the message) or bytes."""
        self.status = Task.NEW
        """``NEW``, ``FETCHED`` or ``PROCESSED``."""
        self._aborted = False
        self._source: Optional[_protocol.Task] = None

    @property
    def aborted(self) -> bool:
        """Whether the FLARE site aborted this task (a trainer may poll it and stop early)."""
        return self._aborted or (self._source is not None and self._source.aborted)

    @aborted.setter
    def aborted(self, value: bool) -> None:
        self._aborted = bool(value)

    def __str__(self) -> str:
        """The task's name and id, as FLARE prints it."""
        return f"'{self.task_name} {self.task_id}'"

    def __repr__(self) -> str:
        """A short description."""
        return f"Task(task_name={self.task_name!r}, task_id={self.task_id!r})"


class TaskResult:
    """The result of a task (FLARE's ``nvflare.client.ipc.defs.TaskResult``).

    ``data``: a dict of arrays (plain numbers and lists of numbers are turned into arrays when
    sent) or bytes for APP_DEFINED; ``meta``: a JSON-able dict (``data_kind`` in it sets the
    result's data kind, default WEIGHTS); ``return_code``: FLARE's return code string.
    """

    def __init__(self, meta: Optional[dict[str, Any]], data: Any, return_code: str = "OK") -> None:
        """Checks the arguments as FLARE does (``TypeError`` for a non-dict meta or non-str rc)."""
        if not meta:
            meta = {}
        if not isinstance(meta, dict):
            raise TypeError(f"meta must be dict but got {type(meta)}")
        if data is None or (isinstance(data, (dict, bytes, bytearray)) and not data):
            data = {}
        if not isinstance(return_code, str):
            raise TypeError(f"return_code must be str but got {type(return_code)}")
        self.return_code = return_code
        """FLARE's return code string."""
        self.meta = meta
        """The result's meta dict."""
        self.data = data
        """The result's data."""


class IPCAgent:
    """FLARE's ``IPCAgent`` over shared memory: fetches tasks from ``ShmexExchanger``.

    Arguments keep FLARE's names, order and defaults. ``flare_site_url``, ``workspace_dir``,
    ``secure_mode`` and ``decomposer_module`` are accepted and not needed (the link is a
    segment only the same user can open; arrays need no decomposer). ``flare_site_name`` and
    ``agent_id`` default to ``$SHMEX_SITE`` and ``$SHMEX_AGENT_ID`` (set for a trainer that
    ``ShmexExchanger`` starts). shmex's own, keyword-only: ``attach_timeout``, how long
    :meth:`start` waits for the FLARE site's segment to appear (default
    ``flare_site_connection_timeout``); ``expected_message_len``, the largest task's bytes if
    known, so that the receive buffer is faulted in at :meth:`start`, not during round 1.
    """

    def __init__(
        self,
        flare_site_url: str = "",
        flare_site_name: Optional[str] = None,
        agent_id: Optional[str] = None,
        workspace_dir: str = "",
        secure_mode: bool = False,
        submit_result_timeout: float = 30.0,
        flare_site_connection_timeout: float = 60.0,
        flare_site_heartbeat_timeout: Optional[float] = None,
        resend_result_interval: float = 2.0,
        decomposer_module: Optional[str] = None,
        *,
        attach_timeout: Optional[float] = None,
        expected_message_len: Optional[int] = None,
    ) -> None:
        """Checks the names; nothing is attached before :meth:`start`."""
        site, agent = link_names(flare_site_name, agent_id)
        self.flare_site_url = flare_site_url
        """Accepted for FLARE parity; not used."""
        self.flare_site_name = site
        """The FLARE site (client) name: the first part of the link's name."""
        self.agent_id = agent
        """The agent id: the second part of the link's name."""
        self.workspace_dir = workspace_dir
        """Accepted for FLARE parity; not used."""
        self.secure_mode = secure_mode
        """Accepted for FLARE parity; the segment is private to its user (mode 0600)."""
        self.submit_result_timeout = submit_result_timeout
        """Longest wait for the FLARE site to take a result, in seconds."""
        self.flare_site_connection_timeout = flare_site_connection_timeout
        """Silence of the FLARE site after which it counts as disconnected, in seconds."""
        self.flare_site_heartbeat_timeout = flare_site_heartbeat_timeout
        """Silence after which the agent closes (``None``: never)."""
        self.resend_result_interval = resend_result_interval
        """Accepted for FLARE parity (the ring is lossless)."""
        self.decomposer_module = decomposer_module
        """Accepted for FLARE parity (arrays need no decomposer)."""
        self.attach_timeout = (
            flare_site_connection_timeout if attach_timeout is None else attach_timeout
        )
        """How long :meth:`start` waits for the FLARE site's segment."""
        self.expected_message_len = expected_message_len
        """The largest task's bytes, if known (its receive buffer is reserved at start)."""
        self.is_started = False
        """Whether :meth:`start` was called."""
        self.is_stopped = False
        """Whether :meth:`stop` was called."""
        self.current_task: Optional[Task] = None
        """The task fetched and not yet answered."""
        self._agent: Optional[Agent] = None
        self._lock = threading.Lock()

    @property
    def is_connected(self) -> bool:
        """Whether the FLARE site is attached and alive."""
        agent = self._agent
        return agent is not None and agent.status == "connected"

    def start(self) -> None:
        """Attaches to the FLARE site's link, waiting up to ``attach_timeout`` for it.

        Raises :class:`CallStateError` after :meth:`stop`, ``shmex.ShmexError`` when no FLARE
        site appears in time. A second call does nothing (FLARE logs a warning).
        """
        with self._lock:
            if self.is_started:
                _log.warning("the agent is already started")
                return
            if self.is_stopped:
                raise CallStateError("cannot start the agent since it is already stopped")
            self._agent = Agent(
                self.flare_site_name,
                self.agent_id,
                submit_result_timeout=self.submit_result_timeout,
                flare_site_connection_timeout=self.flare_site_connection_timeout,
                flare_site_heartbeat_timeout=self.flare_site_heartbeat_timeout,
                resend_result_interval=self.resend_result_interval,
                attach_timeout=self.attach_timeout,
                expected_message_len=self.expected_message_len,
            )
            self.is_started = True

    def stop(self) -> None:
        """Detaches; later ``get_task`` calls raise :class:`AgentClosed`."""
        with self._lock:
            if not self.is_started:
                _log.warning("cannot stop the agent since it is not started")
                return
            if self.is_stopped:
                return
            self.is_stopped = True
            assert self._agent is not None
            self._agent.close()

    def _started(self) -> Agent:
        if self.is_stopped:
            raise AgentClosed("flare agent is closed")
        if self._agent is None:
            raise CallStateError("the agent is not started: call start() first")
        return self._agent

    def get_task(self, timeout: Optional[float] = None) -> Optional[Task]:
        """The next task, waiting up to ``timeout`` seconds (``None``: until one comes).

        Returns ``None`` on timeout. Raises :class:`AgentClosed` when the FLARE site said bye
        or the agent was stopped, :class:`CallStateError` while a fetched task's result is
        not submitted (or before :meth:`start`), and like FLARE ``TypeError``/``ValueError``
        for a timeout that is not a number > 0.
        """
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(f"timeout must be (int, float) but got {type(timeout)}")
            if timeout <= 0:
                raise ValueError(f"timeout must > 0, but got {timeout}")
        agent = self._started()
        got = agent.get_task(timeout)
        if got is None:
            return None
        task = Task(got.task_name, got.task_id, got.meta, got.data)
        task._source = got
        task.status = Task.FETCHED
        self.current_task = task
        return task

    def submit_result(self, result: TaskResult) -> bool:
        """Submits the current task's result; returns whether the FLARE site accepted it.

        ``False`` (as FLARE) when the task was aborted, none was fetched since the last
        submission, or the agent is closed. Raises ``TypeError`` for a result that is not a
        :class:`TaskResult` and for data that cannot be sent (FLARE returns ``False`` there;
        shmex says why).
        """
        if not isinstance(result, TaskResult):
            raise TypeError(f"result must be TaskResult but got {type(result)}")
        task = self.current_task
        self.current_task = None
        if task is not None:
            task.status = Task.PROCESSED
            if task.aborted:
                return False
        try:
            agent = self._started()
            return agent.submit_result(as_tensors(result.data), result.meta, result.return_code)
        except (AgentClosed, CallStateError) as e:
            _log.error("result not submitted: %s", e)
            return False

    def __repr__(self) -> str:
        """A short description."""
        return f"IPCAgent(site={self.flare_site_name!r}, agent_id={self.agent_id!r})"


__all__ = ["AgentClosed", "CallStateError", "IPCAgent", "Task", "TaskResult"]
