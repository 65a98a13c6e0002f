"""Tensors in and out: numpy arrays to the compiled module's tuples, and messages to arrays.

Outgoing arrays are passed by reference (the compiled module copies their memory once, into
the shared-memory ring). Incoming tensors are numpy arrays over the received message's memory:
each array's base is a :class:`_TensorMemory` that holds the message, so the memory lives
exactly as long as the last array (numpy's ``__array_interface__`` keeps the exporting object
as the array's base).

bfloat16: numpy has no bfloat16. A received ``bf16`` tensor is an ``ml_dtypes.bfloat16`` array
when ``ml_dtypes`` is installed, else a ``uint16`` array of the same bits (``Task.dtypes`` /
``Reply.dtypes`` still say ``"bf16"``). To send bf16, pass an ``ml_dtypes.bfloat16`` array or
wrap a ``uint16`` array of the bits in :class:`BF16`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, Optional, Union

import numpy as np

from . import _shmex

try:  # pragma: no cover - depends on the environment
    import ml_dtypes

    BFLOAT16: Optional[np.dtype[Any]] = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - depends on the environment
    BFLOAT16 = None

MAX_DIMS = 8
"""Most dimensions a tensor may have."""

_ORDER = "<" if sys.byteorder == "little" else ">"

# shmex dtype name -> numpy typestr of the same bits (bf16 as its uint16 bits).
TYPESTR = {
    "f16": f"{_ORDER}f2",
    "bf16": f"{_ORDER}u2",
    "f32": f"{_ORDER}f4",
    "f64": f"{_ORDER}f8",
    "i8": "|i1",
    "i16": f"{_ORDER}i2",
    "i32": f"{_ORDER}i4",
    "i64": f"{_ORDER}i8",
    "u8": "|u1",
    "u16": f"{_ORDER}u2",
    "u32": f"{_ORDER}u4",
    "u64": f"{_ORDER}u8",
    "bool": "|b1",
}

# (numpy kind, itemsize) -> shmex dtype name.
_FROM_NUMPY = {
    ("f", 2): "f16",
    ("f", 4): "f32",
    ("f", 8): "f64",
    ("i", 1): "i8",
    ("i", 2): "i16",
    ("i", 4): "i32",
    ("i", 8): "i64",
    ("u", 1): "u8",
    ("u", 2): "u16",
    ("u", 4): "u32",
    ("u", 8): "u64",
    ("b", 1): "bool",
}

Tensors = Mapping[str, Any]
"""What ``data`` may be besides bytes: tensor names mapped to arrays."""

Data = Union[Tensors, bytes, bytearray, memoryview, None]
"""What may be sent: named arrays, opaque bytes (APP_DEFINED), or nothing."""

ReceivedData = Union[dict[str, np.ndarray], bytes]
"""What is received: named arrays viewing the message, or opaque bytes."""

OutTensor = tuple[str, str, list[int], np.ndarray]


class BF16:
    """Marks a ``uint16`` array as the bits of bfloat16 values, to send it as ``bf16``.

    Needed only without ``ml_dtypes`` (whose ``bfloat16`` arrays are recognised as they are).
    """

    __slots__ = ("bits",)

    def __init__(self, bits: np.ndarray) -> None:
        """Wraps ``bits``, an array of dtype ``uint16``."""
        if not isinstance(bits, np.ndarray) or bits.dtype != np.uint16:
            raise TypeError("BF16 wraps a numpy array of dtype uint16 (the bfloat16 bits)")
        self.bits = bits

    def __repr__(self) -> str:
        """A short description."""
        return f"BF16(shape={self.bits.shape})"


def shmex_dtype(name: str, dtype: np.dtype[Any]) -> str:
    """The shmex dtype of a numpy dtype, or ``TypeError`` naming the tensor."""
    if dtype.hasobject or dtype.fields is not None:
        raise TypeError(
            f"tensor {name!r}: dtype {dtype} (object or structured) cannot be sent; "
            "use a numeric or bool array"
        )
    if BFLOAT16 is not None and dtype == BFLOAT16:
        return "bf16"
    found = _FROM_NUMPY.get((dtype.kind, dtype.itemsize))
    if found is None:
        raise TypeError(
            f"tensor {name!r}: dtype {dtype} is not supported "
            "(f16, bf16, f32, f64, i8..i64, u8..u64, bool are)"
        )
    return found


def _as_array(name: str, value: Any) -> tuple[str, np.ndarray]:
    """``(shmex dtype, C-contiguous native-order array)`` for one outgoing tensor."""
    if isinstance(value, BF16):
        dtype, array = "bf16", value.bits
    elif isinstance(value, np.ndarray):
        array = value
        dtype = shmex_dtype(name, array.dtype)
    elif hasattr(value, "__array__") or hasattr(value, "__array_interface__"):
        array = np.asarray(value)
        dtype = shmex_dtype(name, array.dtype)
    else:
        raise TypeError(
            f"tensor {name!r}: expected a numpy array (or an object with __array__), "
            f"got {type(value).__name__}"
        )
    if array.ndim > MAX_DIMS:
        raise ValueError(f"tensor {name!r} has {array.ndim} dimensions, at most {MAX_DIMS}")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    return dtype, array


def outgoing(
    data: Data, data_kind: Optional[str]
) -> tuple[str, list[OutTensor], Optional[np.ndarray]]:
    """``(data kind, tensors, opaque)`` for the compiled module; raises before anything is sent.

    Opaque bytes default to data kind APP_DEFINED, tensors to WEIGHTS.
    """
    if data_kind is not None:
        check_data_kind(data_kind)
    if isinstance(data, (bytes, bytearray, memoryview)):
        kind = "APP_DEFINED" if data_kind is None else data_kind
        if kind != "APP_DEFINED":
            raise ValueError(f"opaque bytes need data kind APP_DEFINED, not {kind}")
        opaque = np.frombuffer(data, dtype=np.uint8)
        return kind, [], opaque
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise TypeError(
            "data must be a dict of numpy arrays, bytes (APP_DEFINED) or None, "
            f"got {type(data).__name__}"
        )
    tensors: list[OutTensor] = []
    for name, value in data.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be strings, got {type(name).__name__} {name!r}")
        dtype, array = _as_array(name, value)
        tensors.append((name, dtype, list(array.shape), array))
    return ("WEIGHTS" if data_kind is None else data_kind), tensors, None


def check_data_kind(data_kind: object) -> str:
    """``data_kind`` if it is one of FLARE's data kind names, else an exception."""
    if not isinstance(data_kind, str):
        raise TypeError(f"data_kind must be a string, got {type(data_kind).__name__}")
    if data_kind not in _shmex.DATA_KINDS:
        raise ValueError(f"unknown data kind {data_kind!r} (one of {_shmex.DATA_KINDS})")
    return data_kind


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"meta value of type {type(value).__name__} is not JSON-serializable")


def meta_json(meta: Optional[Mapping[str, Any]]) -> str:
    """JSON text of a meta dict (string keys, JSON values; numpy scalars become numbers)."""
    if meta is None:
        return "{}"
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    for key in meta:
        if not isinstance(key, str):
            raise TypeError(f"meta keys must be strings, got {type(key).__name__} {key!r}")
    try:
        return json.dumps(meta, allow_nan=False, default=_json_default)
    except ValueError as e:  # NaN, infinity, circular references
        raise ValueError(f"meta is not valid JSON: {e}") from None
    except TypeError as e:
        raise TypeError(f"meta is not JSON-serializable: {e}") from None


class _TensorMemory:
    """The base of a received array: numpy's array interface over the message's memory.

    Holds the message, so the memory stays valid while any array viewing it exists.
    """

    __slots__ = ("__array_interface__", "_message")

    def __init__(
        self, message: _shmex._Message, typestr: str, shape: list[int], address: int
    ) -> None:
        self._message = message
        self.__array_interface__ = {
            "version": 3,
            "shape": tuple(shape),
            "typestr": typestr,
            # Read-only: the bytes belong to the message, which other arrays may view too.
            "data": (address, True),
        }


def incoming(message: _shmex._Message) -> tuple[ReceivedData, dict[str, str]]:
    """The data of a received message (arrays viewing it, or opaque bytes) and its dtypes."""
    opaque = message.opaque()
    specs = message.tensors()
    if opaque and not specs:
        return opaque, {}
    arrays: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for name, dtype, shape, address, _nbytes in specs:
        array = np.asarray(_TensorMemory(message, TYPESTR[dtype], shape, address))
        if dtype == "bf16" and BFLOAT16 is not None:
            array = array.view(BFLOAT16)
        arrays[name] = array
        dtypes[name] = dtype
    return arrays, dtypes


def meta_of(message: _shmex._Message) -> dict[str, Any]:
    """The meta dict of a received message."""
    meta = json.loads(message.meta_json())
    assert isinstance(meta, dict)
    return meta
