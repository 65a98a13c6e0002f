"""Loans: a task or result built in place in the shared-memory ring (no copy on this side).

A loan reserves ring space for a message laid out by a spec (tensor names, shapes, dtypes);
its tensors are writable numpy arrays over that space. Fill them, then commit the loan
(:meth:`ResultLoan.commit`, :meth:`TaskLoan.execute`); leaving a ``with`` block (or calling
:meth:`abandon`) without committing sends nothing.

Why it is safe. A numpy array cannot be revoked, so the ring space must not be handed on
while any array can reach it. Each array's base object holds a lease on the loan, and numpy
keeps an array's base alive through every view, slice, ``memoryview``, DLPack capsule or
``torch.from_numpy`` tensor made from it. So:

- committing is refused (:class:`~shmex.CallStateError`, ``code == "CALL_STATE"``) while
  any array obtained from the loan is still referenced: ``del`` them first (the arrays made
  by ``loan[name][...] = values`` are gone when the statement ends). After the commit no
  array of the loan exists and none can be made (``CALL_STATE`` again);
- abandoning while arrays are referenced keeps the ring space reserved until the last of
  them is gone (meanwhile the agent's other submissions raise ``CALL_STATE``, and an
  exchanger's task stays in flight), so the space is never reused under a live array.

Arrays are made on each access (``loan[name]``, ``loan.arrays``); the loan keeps none itself.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Optional, Union

import numpy as np

from . import _shmex, _tensors

Shape = Union[int, tuple[int, ...], list[int]]
"""A tensor shape: an int (1-d) or a sequence of ints."""

TensorSpecs = Mapping[str, tuple[Shape, Any]]
"""What a loan holds: tensor names mapped to ``(shape, dtype)``."""

SpecTensor = tuple[str, str, list[int]]


def _dtype_name(name: str, dtype: Any) -> str:
    """The shmex dtype of a spec entry: a shmex name (``"f32"``, ``"bf16"``) or a numpy dtype."""
    if isinstance(dtype, str):
        if dtype in _tensors.TYPESTR:
            return dtype
        raise TypeError(
            f"tensor {name!r}: dtype {dtype!r} is not a shmex dtype name "
            f"(one of {sorted(_tensors.TYPESTR)}); pass numpy dtypes as objects (np.float32)"
        )
    try:
        np_dtype = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"tensor {name!r}: {dtype!r} is not a dtype: {e}") from None
    return _tensors.shmex_dtype(name, np_dtype)


def _shape(name: str, shape: object) -> list[int]:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        dims = [int(shape)]
    elif isinstance(shape, (tuple, list)):
        dims = []
        for d in shape:
            if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
                raise TypeError(f"tensor {name!r}: shape {shape!r} must hold ints")
            dims.append(int(d))
    else:
        raise TypeError(f"tensor {name!r}: shape must be an int or a tuple of ints")
    if any(d < 0 for d in dims):
        raise ValueError(f"tensor {name!r}: shape {shape!r} has a negative dimension")
    if len(dims) > _tensors.MAX_DIMS:
        raise ValueError(f"tensor {name!r} has {len(dims)} dimensions, at most {_tensors.MAX_DIMS}")
    return dims


def specs(tensors: Optional[TensorSpecs], opaque: int) -> tuple[list[SpecTensor], int]:
    """The compiled module's spec of ``tensors`` (name → (shape, dtype)) and opaque bytes."""
    if tensors is None:
        tensors = {}
    if not isinstance(tensors, Mapping):
        raise TypeError(
            f"tensors must be a dict of name -> (shape, dtype), got {type(tensors).__name__}"
        )
    out: list[SpecTensor] = []
    for name, entry in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be strings, got {type(name).__name__} {name!r}")
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise TypeError(f"tensor {name!r}: expected (shape, dtype), got {entry!r}")
        shape, dtype = entry
        out.append((name, _dtype_name(name, dtype), _shape(name, shape)))
    if isinstance(opaque, bool) or not isinstance(opaque, (int, np.integer)) or opaque < 0:
        raise ValueError(f"opaque must be a number of bytes >= 0, got {opaque!r}")
    return out, int(opaque)


class _LoanMemory:
    """The base of a loaned array: numpy's array interface over ring memory, and the lease.

    While this object lives (numpy keeps it as the base of the array and of all its views),
    the loan cannot be committed and its ring space stays reserved.
    """

    __slots__ = ("__array_interface__", "_lease")

    def __init__(
        self, lease: _shmex._LoanLease, typestr: str, shape: list[int], address: int
    ) -> None:
        self._lease = lease
        self.__array_interface__ = {
            "version": 3,
            "shape": tuple(shape),
            "typestr": typestr,
            "data": (address, False),  # writable: the caller fills it
        }


_Core = Union[_shmex._ResultLoan, _shmex._TaskLoan]


class _Loan:
    """What result and task loans share: the tensors as writable arrays, the lifecycle."""

    __slots__ = ("_core", "_index", "_tensors")

    def __init__(self, core: _Core) -> None:
        self._core: _Core = core
        # The spec does not change during the loan: read it once.
        self._tensors = core.tensors()
        self._index = {name: i for i, (name, *_rest) in enumerate(self._tensors)}

    @property
    def task_id(self) -> str:
        """The id of the task (a task loan's own; a result loan's: the task it answers)."""
        return self._core.task_id()

    @property
    def names(self) -> list[str]:
        """The tensor names, in spec order."""
        return list(self._index)

    @property
    def state(self) -> str:
        """``open``, ``committed``, ``abandoned`` or ``abandoned (arrays alive)``."""
        return self._core.state()

    def __getitem__(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a writable array in the ring (holds old ring bytes: fill it)."""
        index = self._index.get(name)
        if index is None:
            raise KeyError(name)
        _name, dtype, shape, _nbytes = self._tensors[index]
        lease, address, _len = self._core.lease(index)
        array = np.asarray(_LoanMemory(lease, _tensors.TYPESTR[dtype], shape, address))
        if dtype == "bf16" and _tensors.BFLOAT16 is not None:
            array = array.view(_tensors.BFLOAT16)
        return array

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Every tensor as a writable array (new arrays on each access)."""
        return {name: self[name] for name in self._index}

    @property
    def opaque(self) -> np.ndarray:
        """The reserved opaque bytes (APP_DEFINED) as a writable ``uint8`` array."""
        lease, address, nbytes = self._core.lease(None)
        return np.asarray(_LoanMemory(lease, "|u1", [nbytes], address))

    def _before_commit(self) -> None:
        # Arrays caught in reference cycles are only freed by the collector.
        if self._core.leases() > 0:
            gc.collect()

    def abandon(self) -> None:
        """Sends nothing; the ring space is freed once no array of the loan is referenced.

        Does nothing once committed or abandoned.
        """
        self._core.abandon()

    def __enter__(self) -> Any:
        """Returns the loan."""
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        """Abandons the loan unless it was committed."""
        self.abandon()

    def __repr__(self) -> str:
        """A short description."""
        return f"{type(self).__name__}(task_id={self.task_id!r}, state={self.state!r})"


class ResultLoan(_Loan):
    """A result built in place in the result ring (:meth:`shmex.Agent.result_loan`).

    >>> with agent.result_loan({"w": (1024, np.float32)}) as loan:   # doctest: +SKIP
    ...     loan["w"][...] = task.data["w"] * 2
    ...     accepted = loan.commit()

    See the module docs for the rules that keep arrays from outliving the ring space.
    """

    __slots__ = ("_on_commit",)

    def __init__(self, core: _shmex._ResultLoan, on_commit: Any) -> None:
        """A loan; made by :meth:`shmex.Agent.result_loan`."""
        super().__init__(core)
        self._on_commit = on_commit

    def commit(self, return_code: str = "OK") -> bool:
        """Sends the result with ``return_code``; returns whether the exchanger accepted it.

        ``False`` when the task was aborted meanwhile (nothing is sent). Raises
        :class:`~shmex.CallStateError` while arrays of the loan are referenced or once it is
        committed or abandoned, :class:`~shmex.AgentClosed` when the agent was closed. The GIL
        is released while waiting for the exchanger's acknowledgement; Ctrl-C raises
        ``KeyboardInterrupt`` and the result, already in the ring, stays sent.
        """
        from ._protocol import _check_return_code

        rc = _check_return_code(return_code)
        self._before_commit()
        core = self._core
        assert isinstance(core, _shmex._ResultLoan)
        try:
            return core.commit(rc)
        finally:
            if core.state() == "committed":
                self._on_commit()


class TaskLoan(_Loan):
    """A task built in place in the task ring (:meth:`shmex.Exchanger.task_loan`).

    The task is in flight from the moment the loan is made (a concurrent ``execute`` answers
    ``BAD_REQUEST_DATA``); it reaches the agent at :meth:`execute`. Abandoning it ends it.
    See the module docs for the rules that keep arrays from outliving the ring space.
    """

    __slots__ = ()

    def execute(self, abort: Any = None, timeout: Optional[float] = None) -> Any:
        """Sends the task and waits for its result: a :class:`~shmex.Reply`.

        ``abort`` and ``timeout`` as for :meth:`shmex.Exchanger.execute`; so are the return
        codes and Ctrl-C. Raises :class:`~shmex.CallStateError` while arrays of the loan are
        referenced or once it is executed or abandoned.
        """
        from ._protocol import _check_abort, _check_seconds, _reply

        seconds = _check_seconds("timeout", timeout, optional=True)
        _check_abort(abort)
        self._before_commit()
        core = self._core
        assert isinstance(core, _shmex._TaskLoan)
        rc, result_kind, message = core.execute(abort, seconds)
        return _reply(rc, core.task_id(), result_kind, message)
