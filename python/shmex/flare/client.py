"""A Client-API-style trainer interface over shmex (FLARE's ``nvflare.client``).

A FLARE Client API script runs by changing one import::

    import shmex.flare.client as flare           # was: import nvflare.client as flare
    from shmex.flare.client import FLModel       # FLARE's FLModel when nvflare is installed

    flare.init()
    while flare.is_running():
        model = flare.receive()                  # params: read-only arrays, no copy
        params = {k: v + 1 for k, v in model.params.items()}
        flare.send(flare.FLModel(params=params, metrics={"loss": 0.1}))

``init`` attaches to the link ``shmex.<site>.<agent_id>`` of a ``ShmexExchanger``: ``site``
and ``agent_id`` default to ``$SHMEX_SITE`` and ``$SHMEX_AGENT_ID``, which the exchanger sets
for a trainer it starts (``train_command``). FLModel maps to the DXO FLARE sends as FLARE's
``FLModelUtils`` does (FULL ↔ WEIGHTS, DIFF ↔ WEIGHT_DIFF, metrics alone ↔ METRICS, metrics
beside params ↔ meta ``initial_metrics``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, Optional, Union

from .._protocol import Agent
from .._shmex import AgentClosed
from ._common import ENV_JOB_ID, META_JOB_ID, META_SITE_NAME, as_tensors, link_names
from ._model import FLModel, ParamsType, model_of_task, result_of_model

_log = logging.getLogger(__name__)

TRAIN_TASK = "train"
"""The task name ``is_train`` looks for (FLARE's default)."""
EVALUATE_TASK = "validate"
"""The task name ``is_evaluate`` looks for (FLARE's default)."""
SUBMIT_MODEL_TASK = "submit_model"
"""The task name ``is_submit_model`` looks for (FLARE's default)."""


class ClientAPI:
    """One trainer's connection: the state behind the module-level functions.

    ``site``/``agent_id``: the link's names (default ``$SHMEX_SITE``/``$SHMEX_AGENT_ID``);
    ``attach_timeout``: how long to wait for the exchanger's segment to appear.
    """

    def __init__(
        self,
        site: Optional[str] = None,
        agent_id: Optional[str] = None,
        *,
        rank: str = "0",
        attach_timeout: float = 60.0,
    ) -> None:
        """Attaches to the link (waiting up to ``attach_timeout``)."""
        self.site, self.agent_id = link_names(site, agent_id)
        self.rank = rank
        """The process rank given to ``init``."""
        self._agent: Optional[Agent] = Agent(
            self.site, self.agent_id, attach_timeout=attach_timeout
        )
        self._model: Optional[FLModel] = None
        self._task_name: Optional[str] = None
        self._aborted: Callable[[], bool] = lambda: False
        self._sys_info: dict[str, Any] = {
            META_JOB_ID: os.environ.get(ENV_JOB_ID, ""),
            META_SITE_NAME: self.site,
        }

    def receive(self, timeout: Optional[float] = None) -> Optional[FLModel]:
        """The model of the current task, waiting up to ``timeout`` for one (``None``: forever).

        Returns the same model until :meth:`send`; ``None`` on timeout or once the FLARE site
        said bye (then :meth:`is_running` is false).
        """
        if self._model is not None:
            return self._model
        agent = self._agent
        if agent is None:
            return None
        try:
            task = agent.get_task(timeout)
        except AgentClosed:
            self.shutdown()
            return None
        if task is None:
            return None
        model = model_of_task(task.data, task.meta, task.data_kind)
        for key in (META_JOB_ID, META_SITE_NAME):
            if isinstance(model.meta.get(key), str):
                self._sys_info[key] = model.meta[key]
            else:
                model.meta[key] = self._sys_info[key]
        self._model = model
        self._task_name = task.task_name
        self._aborted = lambda: task.aborted
        return model

    def send(self, model: FLModel, clear_cache: bool = True) -> None:
        """Sends ``model`` as the current task's result.

        Raises ``TypeError`` for a non-FLModel, ``RuntimeError`` before :meth:`receive` or when
        the FLARE site did not accept the result (a result for an aborted task is dropped with
        a warning, as FLARE does). The next :meth:`receive` waits for the next task;
        ``clear_cache`` (default) also drops the params of ``model`` and of the received model,
        as FLARE does, so their memory can go.
        """
        if not isinstance(model, FLModel):
            raise TypeError("model needs to be an instance of FLModel")
        if self._model is None or self._agent is None:
            raise RuntimeError('"receive" needs to be called before sending model!')
        data, meta, kind = result_of_model(model)
        aborted = self._aborted()
        accepted = self._agent.submit_result(as_tensors(data), meta, data_kind=kind)
        received = self._model
        self._model = None
        self._aborted = lambda: False
        if clear_cache:
            model.params = None
            model.optimizer_params = None
            received.params = None
        if not accepted:
            if aborted:
                _log.warning("the FLARE site aborted the task; its result was dropped")
            else:
                raise RuntimeError("the FLARE site did not accept the result")

    def is_running(self) -> bool:
        """Whether a task is there to work on, waiting for the next one if need be."""
        return self.receive() is not None

    def system_info(self) -> dict[str, Any]:
        """``{"job_id": ..., "site_name": ...}`` (FLARE's ``system_info``)."""
        return dict(self._sys_info)

    def get_job_id(self) -> str:
        """FLARE's job id."""
        return str(self._sys_info[META_JOB_ID])

    def get_site_name(self) -> str:
        """The FLARE site (client) name."""
        return str(self._sys_info[META_SITE_NAME])

    def get_task_name(self) -> Optional[str]:
        """The name of the current task (``None`` before one is received)."""
        return self._task_name

    def is_train(self) -> bool:
        """Whether the current task is ``train``."""
        return self._task_name == TRAIN_TASK

    def is_evaluate(self) -> bool:
        """Whether the current task is ``validate``."""
        return self._task_name == EVALUATE_TASK

    def is_submit_model(self) -> bool:
        """Whether the current task is ``submit_model``."""
        return self._task_name == SUBMIT_MODEL_TASK

    def shutdown(self) -> None:
        """Detaches; :meth:`is_running` is false from now on."""
        agent, self._agent = self._agent, None
        self._model = None
        if agent is not None:
            agent.close()


_lock = threading.Lock()
_default: Optional[ClientAPI] = None


def init(
    rank: Optional[Union[str, int]] = None,
    config_file: Optional[str] = None,
    *,
    site: Optional[str] = None,
    agent_id: Optional[str] = None,
    attach_timeout: float = 60.0,
) -> ClientAPI:
    """Attaches this trainer to its FLARE site (FLARE's ``flare.init``).

    ``rank`` (default ``$RANK`` or ``"0"``) and ``config_file`` are accepted for FLARE parity;
    ``site``/``agent_id`` default to ``$SHMEX_SITE``/``$SHMEX_AGENT_ID``; ``attach_timeout``:
    how long to wait for the exchanger. A second call returns the first connection.
    """
    global _default
    del config_file
    with _lock:
        if _default is None:
            rank = os.environ.get("RANK", "0") if rank is None else str(rank)
            _default = ClientAPI(site, agent_id, rank=rank, attach_timeout=attach_timeout)
        else:
            _log.warning("init() was called before; the later call is ignored")
        return _default


def _context(ctx: Optional[ClientAPI]) -> ClientAPI:
    if ctx is not None:
        return ctx
    if _default is None:
        raise RuntimeError("no connection: call init() before using the Client API")
    return _default


def receive(timeout: Optional[float] = None, ctx: Optional[ClientAPI] = None) -> Optional[FLModel]:
    """The current task's model (see :meth:`ClientAPI.receive`)."""
    return _context(ctx).receive(timeout)


def send(model: FLModel, clear_cache: bool = True, ctx: Optional[ClientAPI] = None) -> None:
    """Sends the result (see :meth:`ClientAPI.send`)."""
    _context(ctx).send(model, clear_cache)


def is_running(ctx: Optional[ClientAPI] = None) -> bool:
    """Whether a task is there to work on (see :meth:`ClientAPI.is_running`)."""
    return _context(ctx).is_running()


def system_info(ctx: Optional[ClientAPI] = None) -> dict[str, Any]:
    """The job id and site name."""
    return _context(ctx).system_info()


def get_job_id(ctx: Optional[ClientAPI] = None) -> str:
    """FLARE's job id."""
    return _context(ctx).get_job_id()


def get_site_name(ctx: Optional[ClientAPI] = None) -> str:
    """The FLARE site name."""
    return _context(ctx).get_site_name()


def get_task_name(ctx: Optional[ClientAPI] = None) -> Optional[str]:
    """The current task's name."""
    return _context(ctx).get_task_name()


def is_train(ctx: Optional[ClientAPI] = None) -> bool:
    """Whether the current task is ``train``."""
    return _context(ctx).is_train()


def is_evaluate(ctx: Optional[ClientAPI] = None) -> bool:
    """Whether the current task is ``validate``."""
    return _context(ctx).is_evaluate()


def is_submit_model(ctx: Optional[ClientAPI] = None) -> bool:
    """Whether the current task is ``submit_model``."""
    return _context(ctx).is_submit_model()


def shutdown(ctx: Optional[ClientAPI] = None) -> None:
    """Detaches; a later ``init`` attaches anew."""
    global _default
    api = _context(ctx)
    api.shutdown()
    with _lock:
        if api is _default:
            _default = None


__all__ = [
    "EVALUATE_TASK",
    "SUBMIT_MODEL_TASK",
    "TRAIN_TASK",
    "ClientAPI",
    "FLModel",
    "ParamsType",
    "get_job_id",
    "get_site_name",
    "get_task_name",
    "init",
    "is_evaluate",
    "is_running",
    "is_submit_model",
    "is_train",
    "receive",
    "send",
    "shutdown",
    "system_info",
]
