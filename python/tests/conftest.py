"""Fixtures: a unique link name per test, an echo agent in a thread, no segment left behind."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import shmex

_counter = itertools.count()


def _segments(prefix: str) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]


@pytest.fixture
def link() -> Iterator[tuple[str, str]]:
    """A (site, agent_id) pair no other test uses; fails if its segment is left behind."""
    site = f"pytest{os.getpid()}x{next(_counter)}"
    yield site, "agent"
    assert _segments(f"shmex.{site}.") == [], "segment left in /dev/shm"


class Peer:
    """Runs ``body(agent)`` in a thread with an agent attached to ``link``."""

    def __init__(self, link: tuple[str, str], body: Callable[[shmex.Agent], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._body = body
        self._link = link
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with shmex.Agent(*self._link, attach_timeout=10) as agent:
                self.result = self._body(agent)
        except BaseException as e:  # reported by join()
            self.error = e

    def join(self, timeout: float = 30) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "agent thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def resend(task: shmex.Task) -> Any:
    """The task's data as it can be sent back (bf16 without ml_dtypes is re-marked)."""
    if not isinstance(task.data, dict):
        return task.data
    return {
        n: shmex.BF16(a) if task.dtypes[n] == "bf16" and a.dtype == np.uint16 else a
        for n, a in task.data.items()
    }


def echo(agent: shmex.Agent, count: int = 1) -> list[shmex.Task]:
    """Answers ``count`` tasks with their own data and meta; returns the tasks."""
    tasks = []
    for _ in range(count):
        task = agent.get_task(timeout=20)
        assert task is not None
        tasks.append(task)
        assert agent.submit_result(resend(task), {"echo": True, "data_kind": task.data_kind})
    return tasks


@pytest.fixture
def peer() -> type[Peer]:
    """The :class:`Peer` class."""
    return Peer
