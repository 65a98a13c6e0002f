"""``FLModel`` (FLARE's when installed, else a compatible class) and its DXO mapping.

The mapping follows FLARE's ``FLModelUtils.to_shareable``/``from_shareable``: params of
``ParamsType.FULL`` travel as data kind WEIGHTS, ``DIFF`` as WEIGHT_DIFF, metrics alone as
METRICS, metrics beside params as meta ``initial_metrics``; rounds travel in the meta keys
``current_round``/``total_round`` that FLARE's IPC exchanger sets.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any, Optional, Union

from ._common import (
    META_CURRENT_ROUND,
    META_DATA_KIND,
    META_INITIAL_METRICS,
    META_TOTAL_ROUND,
    scalars_out,
)


class _ParamsType(str, Enum):
    """What ``FLModel.params`` holds (FLARE's ``ParamsType``)."""

    FULL = "FULL"
    """The whole model."""
    DIFF = "DIFF"
    """The change against the received model."""


def _non_negative(what: str, value: Optional[int]) -> None:
    if value is not None and (not isinstance(value, int) or value < 0):
        raise ValueError(f"{what} must be a non-negative int, got {value!r}")


class _FLModel:
    """FLARE's ``FLModel`` for when nvflare is not installed: same fields, same checks."""

    def __init__(
        self,
        params_type: Union[str, _ParamsType, None] = None,
        params: Any = None,
        optimizer_params: Any = None,
        metrics: Optional[dict[str, Any]] = None,
        start_round: Optional[int] = 0,
        current_round: Optional[int] = None,
        total_rounds: Optional[int] = None,
        meta: Optional[dict[str, Any]] = None,
    ) -> None:
        """A model; ``params_type`` defaults to FULL when ``params`` is given."""
        kind: Optional[_ParamsType] = None
        if params_type is None:
            if params is not None:
                kind = _ParamsType.FULL
        else:
            kind = _ParamsType(params_type)
        if kind is not None and params is None:
            raise ValueError(f"params must be provided when params_type is {kind}")
        if metrics is not None and not isinstance(metrics, dict):
            raise TypeError(f"metrics must be dict, got {type(metrics).__name__}")
        if meta is not None and not isinstance(meta, dict):
            raise TypeError(f"meta must be dict, got {type(meta).__name__}")
        _non_negative("start_round", start_round)
        _non_negative("current_round", current_round)
        _non_negative("total_rounds", total_rounds)
        self.params_type = kind
        """FULL, DIFF, or ``None`` without params."""
        self.params = params
        """The model parameters: a dict of arrays."""
        self.optimizer_params = optimizer_params
        """Optimizer parameters (not carried over the link)."""
        self.metrics = metrics
        """Evaluation metrics (a dict of numbers)."""
        self.start_round = start_round
        """The first round."""
        self.current_round = current_round
        """The current round."""
        self.total_rounds = total_rounds
        """The number of rounds."""
        self.meta: dict[str, Any] = {} if meta is None else meta
        """Anything else."""

    def __repr__(self) -> str:
        """A short description."""
        params = len(self.params) if isinstance(self.params, dict) else None
        return (
            f"FLModel(params_type={self.params_type}, params={params}, "
            f"current_round={self.current_round}, total_rounds={self.total_rounds})"
        )


if TYPE_CHECKING:
    FLModel = _FLModel
    ParamsType = _ParamsType
else:
    try:
        from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
    except ImportError:
        FLModel = _FLModel
        ParamsType = _ParamsType

_TO_KIND = {"FULL": "WEIGHTS", "DIFF": "WEIGHT_DIFF"}
_FROM_KIND = {"WEIGHTS": "FULL", "WEIGHT_DIFF": "DIFF"}


def model_of_task(data: Any, meta: dict[str, Any], data_kind: Optional[str]) -> FLModel:
    """The ``FLModel`` of a received task (FLARE's ``FLModelUtils.from_shareable``)."""
    meta = dict(meta)
    kind = meta.pop(META_DATA_KIND, None) or data_kind
    current_round = meta.pop(META_CURRENT_ROUND, None)
    total_rounds = meta.pop(META_TOTAL_ROUND, None)
    metrics = None
    params = None
    params_type = None
    if kind == "METRICS":
        metrics = scalars_out(data) if isinstance(data, dict) else data
    else:
        params = data
        params_type = ParamsType(_FROM_KIND.get(str(kind), "FULL"))
        initial = meta.get(META_INITIAL_METRICS)
        if isinstance(initial, dict):
            metrics = initial
    return FLModel(
        params_type=params_type,
        params=params,
        metrics=metrics,
        current_round=current_round if isinstance(current_round, int) else None,
        total_rounds=total_rounds if isinstance(total_rounds, int) else None,
        meta=meta,
    )


def result_of_model(model: FLModel) -> tuple[Any, dict[str, Any], str]:
    """``(data, meta, data_kind)`` of a model to send (FLARE's ``FLModelUtils.to_shareable``).

    Raises ``ValueError`` for a model with neither params nor metrics.
    """
    meta: dict[str, Any] = {}
    if model.params is None and model.metrics is None:
        raise ValueError("FLModel without params and metrics is NOT supported.")
    if model.params is not None:
        params_type = model.params_type if model.params_type is not None else "FULL"
        kind = _TO_KIND.get(str(getattr(params_type, "value", params_type)))
        if kind is None:
            raise ValueError(f"Invalid ParamsType: ({params_type}).")
        data = model.params
        if model.metrics is not None:
            meta[META_INITIAL_METRICS] = model.metrics
    else:
        kind, data = "METRICS", model.metrics
    meta.update(model.meta or {})
    meta[META_DATA_KIND] = kind
    if model.current_round is not None:
        meta[META_CURRENT_ROUND] = model.current_round
    if model.total_rounds is not None:
        meta[META_TOTAL_ROUND] = model.total_rounds
    return data, meta, kind


__all__ = ["FLModel", "ParamsType", "model_of_task", "result_of_model"]
