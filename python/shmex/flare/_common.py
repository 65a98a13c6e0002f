"""What the FLARE layer's modules share: names of the link, environment keys, conversions."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

ENV_SITE = "SHMEX_SITE"
"""Environment variable with the site name; ``ShmexExchanger`` sets it for the trainer it starts."""

ENV_AGENT_ID = "SHMEX_AGENT_ID"
"""Environment variable with the agent id; ``ShmexExchanger`` sets it for the trainer it starts."""

ENV_JOB_ID = "SHMEX_JOB_ID"
"""Environment variable with FLARE's job id, set for the trainer ``ShmexExchanger`` starts."""

# Meta keys of FLARE's IPC protocol (``nvflare.client.ipc.defs.MetaKey``) and FLMetaKey.
META_DATA_KIND = "data_kind"
META_CURRENT_ROUND = "current_round"
META_TOTAL_ROUND = "total_round"
META_INITIAL_METRICS = "initial_metrics"
META_JOB_ID = "job_id"
META_SITE_NAME = "site_name"


def link_names(site: Optional[str], agent_id: Optional[str]) -> tuple[str, str]:
    """``(site, agent_id)`` of a link, from the arguments or else the environment.

    Raises ``ValueError`` when one is missing or the site name holds '.', which a shmex
    link name reserves as its separator (FLARE site names like ``site-1`` are fine).
    """
    site = os.environ.get(ENV_SITE) if site is None else site
    agent_id = os.environ.get(ENV_AGENT_ID) if agent_id is None else agent_id
    if not isinstance(site, str) or not site:
        raise ValueError(f"no FLARE site name: pass flare_site_name or set ${ENV_SITE}")
    if not isinstance(agent_id, str) or not agent_id:
        raise ValueError(f"no agent id: pass agent_id or set ${ENV_AGENT_ID}")
    if "." in site:
        raise ValueError(
            f"FLARE site name {site!r} holds '.', which shmex link names reserve as their "
            "separator; use a site name without '.' (e.g. 'site-1')"
        )
    return site, agent_id


def as_tensors(data: Any) -> Any:
    """FLARE-style data made sendable: numbers and lists of numbers become numpy arrays.

    FLARE pickles whatever a DXO holds; shmex carries named arrays, so plain Python numbers
    (metrics, counters) are turned into 0-d or n-d arrays. Anything else is passed on as it is
    (and refused by the send with a ``TypeError`` naming the entry).
    """
    if not isinstance(data, Mapping):
        return data
    out: dict[Any, Any] = {}
    for name, value in data.items():
        if isinstance(value, (bool, int, float, np.generic)) or (
            isinstance(value, (list, tuple)) and _numeric(value)
        ):
            value = np.asarray(value)
        out[name] = value
    return out


def _numeric(values: Any) -> bool:
    try:
        return np.asarray(values).dtype.kind in "biuf"
    except (ValueError, TypeError):
        return False


def scalars_out(data: Mapping[str, Any]) -> dict[str, Any]:
    """Received data with 0-d arrays turned back into Python numbers (metrics)."""
    return {
        name: value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
        for name, value in data.items()
    }
