"""``ShmexExchanger``: FLARE 2.9's ``IPCExchanger`` executor over shared memory (needs nvflare).

Put it where a FLARE job uses ``IPCExchanger`` (``job.to(ShmexExchanger(...), "site-1")``).
It creates the link ``shmex.<client name>.<agent_id>`` at START_RUN, sends each task's DXO
to the trainer (an ``shmex.flare.IPCAgent`` or ``shmex.flare.client`` script), turns the
result back into a DXO Shareable, and says bye and removes the link at END_RUN. With
``train_command`` it starts the trainer itself at START_RUN and ends it at END_RUN.

Defaults changed from FLARE's, because FLARE's can hang a job forever:

- ``agent_heartbeat_timeout``: 300 s (FLARE: ``None``). A task waits at most this long for
  an agent that never attached or went silent; then the exchanger panics the job (FLARE's
  ``system_panic``), as FLARE does when this timeout is set.
- A trainer started through ``train_command`` that exits while the job runs panics the job at
  once (FLARE's exchanger does not watch trainer processes).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import threading
import time
from typing import Any, Optional, Union

from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from .. import ReturnCode as _RC
from .._protocol import Exchanger
from ._common import (
    ENV_AGENT_ID,
    ENV_JOB_ID,
    ENV_SITE,
    META_DATA_KIND,
    META_JOB_ID,
    META_SITE_NAME,
    as_tensors,
    link_names,
    scalars_out,
)

JOB_META_KEY_AGENT_ID = "agent_id"
"""The job meta key the agent id is read from when ``agent_id`` is ``None`` (FLARE's)."""

_POLL = 0.2  # seconds between looks at abort, the agent and the trainer process


class _SignalEvent:
    """FLARE's abort ``Signal`` (and the exchanger's end) as the ``is_set()`` shmex polls."""

    def __init__(self, signal: Signal, done: threading.Event) -> None:
        self._signal = signal
        self._done = done

    def is_set(self) -> bool:
        return bool(self._signal.triggered) or self._done.is_set()


class ShmexExchanger(Executor):  # type: ignore[misc]  # nvflare has no type information
    """FLARE's ``IPCExchanger`` over a shmex link (arguments, defaults and behaviour kept).

    ``send_task_timeout`` and ``resend_task_interval`` are accepted and not needed (the ring
    is lossless); ``agent_connection_timeout``, ``agent_heartbeat_interval`` and
    ``agent_ack_timeout`` mean what they mean in FLARE; ``agent_heartbeat_timeout`` defaults
    to 300 s (FLARE: ``None``, which waits forever for a missing agent); ``agent_id`` ``None``:
    read from the job meta key ``agent_id``. shmex's own: ``train_command`` (a command line
    started at START_RUN with ``$SHMEX_SITE``, ``$SHMEX_AGENT_ID`` and ``$SHMEX_JOB_ID`` set,
    and ended at END_RUN), ``train_command_cwd`` (its working directory, default the
    client's), ``result_timeout`` (longest wait for a result, ``None``: forever, as FLARE),
    ``ring_capacity`` (bytes of each ring, ``None``: shmex's default), ``expected_message_len``
    (the largest result's bytes, if known: its receive buffer is faulted in at START_RUN, not
    during round 1). Every argument is kept under an attribute of its own name, which FLARE's
    job export reads back.
    """

    def __init__(
        self,
        send_task_timeout: float = 5.0,
        resend_task_interval: float = 2.0,
        agent_connection_timeout: float = 60.0,
        agent_heartbeat_timeout: Optional[float] = 300.0,
        agent_heartbeat_interval: float = 5.0,
        agent_ack_timeout: float = 5.0,
        agent_id: Optional[str] = None,
        train_command: Optional[Union[str, list[str]]] = None,
        train_command_cwd: Optional[str] = None,
        result_timeout: Optional[float] = None,
        ring_capacity: Optional[int] = None,
        expected_message_len: Optional[int] = None,
    ) -> None:
        """Keeps the arguments; the link is created at START_RUN."""
        Executor.__init__(self)
        self.send_task_timeout = send_task_timeout
        self.resend_task_interval = resend_task_interval
        self.agent_connection_timeout = agent_connection_timeout
        self.agent_heartbeat_timeout = agent_heartbeat_timeout
        self.agent_heartbeat_interval = agent_heartbeat_interval
        self.agent_ack_timeout = agent_ack_timeout
        self.agent_id = agent_id
        self.train_command = train_command
        self.train_command_cwd = train_command_cwd
        self.result_timeout = result_timeout
        self.ring_capacity = ring_capacity
        self.expected_message_len = expected_message_len
        self.exchanger: Optional[Exchanger] = None
        """The shmex exchanger, from START_RUN to END_RUN."""
        self.trainer: Optional[subprocess.Popen[bytes]] = None
        """The trainer process started from ``train_command``."""
        self._done = threading.Event()
        self._site = ""
        self._job_id = ""

    # ---- events ---------------------------------------------------------------------------

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """START_RUN: create the link (and start the trainer); END_RUN: bye, remove, end it."""
        if event_type == EventType.START_RUN:
            self._start(fl_ctx)
        elif event_type == EventType.END_RUN:
            self._stop(fl_ctx)

    def _start(self, fl_ctx: FLContext) -> None:
        if not self.agent_id:
            meta = fl_ctx.get_prop(FLContextKey.JOB_META)
            agent_id = meta.get(JOB_META_KEY_AGENT_ID) if isinstance(meta, dict) else None
            if not agent_id or not isinstance(agent_id, str):
                self.system_panic(
                    reason=f"missing or invalid {JOB_META_KEY_AGENT_ID} in the job meta: "
                    f"{agent_id!r}",
                    fl_ctx=fl_ctx,
                )
                return
            self.agent_id = agent_id
        try:
            self._site, agent = link_names(fl_ctx.get_identity_name(), self.agent_id)
            options: dict[str, Any] = {}
            if self.ring_capacity is not None:
                options["task_ring_capacity"] = int(self.ring_capacity)
                options["result_ring_capacity"] = int(self.ring_capacity)
            self.exchanger = Exchanger(
                self._site,
                agent,
                send_task_timeout=self.send_task_timeout,
                resend_task_interval=self.resend_task_interval,
                agent_connection_timeout=self.agent_connection_timeout,
                agent_heartbeat_timeout=self.agent_heartbeat_timeout,
                agent_heartbeat_interval=self.agent_heartbeat_interval,
                agent_ack_timeout=self.agent_ack_timeout,
                result_timeout=self.result_timeout,
                expected_message_len=self.expected_message_len,
                **options,
            )
        except Exception as e:
            self.system_panic(reason=f"cannot create the shmex link: {e}", fl_ctx=fl_ctx)
            return
        self._job_id = str(fl_ctx.get_job_id() or "")
        self.log_info(fl_ctx, f"shmex link {self.exchanger.name} created")
        if self.train_command:
            self._start_trainer(fl_ctx, agent)

    def _start_trainer(self, fl_ctx: FLContext, agent: str) -> None:
        command = self.train_command
        args = shlex.split(command) if isinstance(command, str) else list(command or [])
        env = dict(os.environ)
        env.update({ENV_SITE: self._site, ENV_AGENT_ID: agent, ENV_JOB_ID: self._job_id})
        try:
            self.trainer = subprocess.Popen(args, env=env, cwd=self.train_command_cwd)
        except OSError as e:
            self.system_panic(reason=f"cannot start the trainer {args}: {e}", fl_ctx=fl_ctx)
            return
        self.log_info(fl_ctx, f"started the trainer (pid {self.trainer.pid}): {args}")

    def _stop(self, fl_ctx: FLContext) -> None:
        self._done.set()
        if self.exchanger is not None:
            self.exchanger.close()  # says bye: the trainer's get_task raises AgentClosed
            self.log_info(fl_ctx, f"shmex link {self.exchanger.name} closed")
        trainer = self.trainer
        if trainer is not None and trainer.poll() is None:
            try:
                trainer.wait(timeout=max(self.agent_ack_timeout, 1.0))
            except subprocess.TimeoutExpired:
                self.log_warning(fl_ctx, f"the trainer (pid {trainer.pid}) did not exit: killed")
                trainer.kill()
                trainer.wait()

    # ---- tasks ----------------------------------------------------------------------------

    def _wait_for_agent(self, abort: _SignalEvent, fl_ctx: FLContext) -> Optional[str]:
        """``None`` once the agent is connected, else the return code to reply with."""
        exchanger = self.exchanger
        assert exchanger is not None
        since = time.monotonic()
        while True:
            if abort.is_set():
                return _RC.TASK_ABORTED
            status = exchanger.status
            if status == "connected":
                return None
            if status in ("stopped", "closed"):
                return _RC.TASK_ABORTED
            trainer = self.trainer
            if trainer is not None and trainer.poll() is not None:
                self.system_panic(
                    reason=f"the trainer exited with {trainer.returncode} while the job runs",
                    fl_ctx=fl_ctx,
                )
                return _RC.EXECUTION_EXCEPTION
            timeout = self.agent_heartbeat_timeout
            if timeout is not None and time.monotonic() - since > timeout:
                self.system_panic(
                    reason=f"no agent on {exchanger.name} for {timeout} s", fl_ctx=fl_ctx
                )
                return _RC.EXECUTION_EXCEPTION
            time.sleep(_POLL)

    def execute(
        self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal
    ) -> Shareable:
        """Sends the task's DXO to the trainer and returns its result as a DXO Shareable.

        BAD_TASK_DATA when the Shareable holds no DXO or data shmex cannot carry (arrays and
        numbers only, JSON-able meta); TASK_ABORTED when the abort signal fires or the job
        ends; the trainer's return code when it is not OK/EARLY_TERMINATION.
        """
        if self.exchanger is None:
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)
        try:
            dxo = from_shareable(shareable)
        except Exception as e:
            self.log_error(fl_ctx, f"Unable to extract dxo from shareable: {e}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        abort = _SignalEvent(abort_signal, self._done)
        waited = self._wait_for_agent(abort, fl_ctx)
        if waited is not None:
            return make_reply(waited)

        is_app_defined = dxo.data_kind == DataKind.APP_DEFINED
        meta = dict(dxo.meta or {})
        meta.setdefault(META_JOB_ID, self._job_id)
        meta.setdefault(META_SITE_NAME, self._site)
        task_id = shareable.get_header(FLContextKey.TASK_ID)
        try:
            reply = self.exchanger.execute(
                task_name,
                as_tensors(dxo.data or {}),
                meta,
                data_kind=dxo.data_kind,
                task_id=task_id if isinstance(task_id, str) and task_id else None,
                current_round=shareable.get_header(AppConstants.CURRENT_ROUND, None),
                total_round=shareable.get_header(AppConstants.NUM_ROUNDS, None),
                abort=abort,
            )
        except (TypeError, ValueError) as e:
            self.log_error(fl_ctx, f"task data cannot be sent over shmex: {e}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        if reply.rc not in (ReturnCode.OK, ReturnCode.EARLY_TERMINATION):
            return make_reply(reply.rc)
        result_meta = dict(reply.meta)
        if is_app_defined:
            data_kind = DataKind.APP_DEFINED
        else:
            data_kind = result_meta.get(META_DATA_KIND, reply.data_kind or DataKind.WEIGHTS)
        data = reply.data
        if isinstance(data, dict) and data_kind == DataKind.METRICS:
            data = scalars_out(data)
        result: Shareable = DXO(data_kind=data_kind, data=data, meta=result_meta).to_shareable()
        result.set_return_code(reply.rc)
        return result


logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["JOB_META_KEY_AGENT_ID", "ShmexExchanger"]
