"""Messages of 256 MiB both ways, copied and loaned, checked by checksum.

Marked ``large`` (``pytest -m "not large"`` leaves them out); they run by default and in CI.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest

import shmex

pytestmark = pytest.mark.large

MIB = 1 << 20
SIZE = 256 * MIB
COUNT = 8  # tensors per message


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(memoryview(np.ascontiguousarray(arrays[name])).cast("B"))
    return h.hexdigest()


# Distinct per element (a multiplicative hash of the index), made once.
_BASE = np.arange(SIZE // COUNT // 4, dtype=np.uint32) * np.uint32(2654435761)


def _fill(out: np.ndarray, seed: int) -> None:
    """A cheap pattern that differs per element and per seed (uint32 view)."""
    u = out.view(np.uint32)
    u[...] = _BASE[: u.size]
    u ^= np.uint32(seed)


def _model(seed: int) -> dict[str, np.ndarray]:
    per = SIZE // COUNT // 4
    arrays = {}
    for i in range(COUNT):
        a = np.empty(per, dtype=np.float32)
        _fill(a, seed + i)
        arrays[f"layer{i}"] = a
    return arrays


def _answer_with_a_new_model(agent: shmex.Agent) -> tuple[str, str]:
    """Checksums the task, answers with a model of seed 100 (copied); both digests."""
    task = agent.get_task(timeout=60)
    assert task is not None
    got = _digest(task.data)
    result = _model(100)
    assert agent.submit_result(result)
    return got, _digest(result)


def test_256MiB_copied_both_ways(link: tuple[str, str], peer: Any) -> None:
    task = _model(1)
    sent = _digest(task)
    with shmex.Exchanger(*link) as ex:
        p = peer(link, _answer_with_a_new_model)
        reply = ex.execute("train", task)
        received_by_agent, result_digest = p.join(120)
    assert reply.rc == "OK"
    nbytes: list[int] = [a.nbytes for a in reply.data.values()]
    assert sum(nbytes) == SIZE
    assert received_by_agent == sent
    assert _digest(reply.data) == result_digest


def test_256MiB_loaned_both_ways(link: tuple[str, str], peer: Any) -> None:
    per = SIZE // COUNT // 4
    spec = {f"layer{i}": ((per,), np.float32) for i in range(COUNT)}
    ring = SIZE + 16 * MIB  # a loan is one ring record

    def trainer(agent: shmex.Agent) -> tuple[str, str]:
        task = agent.get_task(timeout=60)
        assert task is not None
        got = _digest(task.data)
        with agent.result_loan(spec) as loan:
            for i, name in enumerate(loan.names):
                _fill(loan[name], 200 + i)
            arrays = loan.arrays
            digest = _digest(arrays)
            del arrays
            assert loan.commit()
        return got, digest

    with shmex.Exchanger(*link, task_ring_capacity=ring, result_ring_capacity=ring) as ex:
        p = peer(link, trainer)
        with ex.task_loan("train", spec) as loan:
            for i, name in enumerate(loan.names):
                _fill(loan[name], 1 + i)
            arrays = loan.arrays
            sent = _digest(arrays)
            del arrays
            reply = loan.execute()
        received_by_agent, result_digest = p.join(120)
    assert reply.rc == "OK"
    assert received_by_agent == sent == _digest(_model(1))
    assert _digest(reply.data) == result_digest
