"""FLARE compatibility: FLARE 2.9's IPCAgent, Client API and IPCExchanger over shmex.

- Trainers written for FLARE's IPCAgent change one import::

      from shmex.flare import IPCAgent, TaskResult   # was: from nvflare.client.ipc...

- Client API scripts change ``import nvflare.client as flare`` to
  ``import shmex.flare.client as flare`` (:mod:`shmex.flare.client`).
- FLARE jobs use :class:`~shmex.flare.exchanger.ShmexExchanger` where they used
  ``IPCExchanger`` (needs nvflare; the rest of this package does not).

The link between the two is ``/dev/shm/shmex.<site>.<agent_id>``; site names may not hold '.'.
"""

from __future__ import annotations

from typing import Any

from ._agent import AgentClosed, CallStateError, IPCAgent, Task, TaskResult
from ._common import ENV_AGENT_ID, ENV_JOB_ID, ENV_SITE
from ._model import FLModel, ParamsType


def __getattr__(name: str) -> Any:
    """``ShmexExchanger`` on first use, so that importing this package needs no nvflare."""
    if name == "ShmexExchanger":
        from .exchanger import ShmexExchanger

        return ShmexExchanger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ENV_AGENT_ID",
    "ENV_JOB_ID",
    "ENV_SITE",
    "AgentClosed",
    "CallStateError",
    "FLModel",
    "IPCAgent",
    "ParamsType",
    "ShmexExchanger",
    "Task",
    "TaskResult",
]
