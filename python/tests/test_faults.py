"""Processes killed with SIGKILL: a Python agent mid-task, the exchanger's process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
from conftest import echo

import shmex

W = {"w": np.arange(1024, dtype=np.float32)}

# An agent that fetches one task, says so on stdout, then hangs (until SIGKILLed).
HANGING_AGENT = """
import sys, time, shmex
agent = shmex.Agent(sys.argv[1], sys.argv[2], attach_timeout=20)
task = agent.get_task(timeout=20)
print("GOT", task.task_id, float(task.data["w"].sum()), flush=True)
time.sleep(600)
"""

# An agent that answers one task with its data doubled, then exits.
ECHO_AGENT = """
import sys, shmex
with shmex.Agent(sys.argv[1], sys.argv[2], attach_timeout=20) as agent:
    task = agent.get_task(timeout=20)
    print("GOT", task.task_id, flush=True)
    assert agent.submit_result({"w": task.data["w"] * 2})
"""

# An exchanger that says READY and waits to be killed.
EXCHANGER = """
import sys, time, shmex
ex = shmex.Exchanger(sys.argv[1], sys.argv[2])
print("READY", flush=True)
time.sleep(600)
"""


def _spawn(script: str, link: tuple[str, str], tmp_path: Any) -> subprocess.Popen[str]:
    # Run away from the source tree so that the installed package is imported.
    return subprocess.Popen(
        [sys.executable, "-c", script, *link],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )


def _line(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """The process's next stdout line, waited for at most ``timeout`` seconds."""
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert got and got[0], f"no line from the child (exit code {proc.poll()})"
    return got[0].strip()


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


def test_sigkill_of_an_agent_mid_task_redelivers_to_the_restarted_agent(
    link: tuple[str, str], tmp_path: Any
) -> None:
    with shmex.Exchanger(*link) as ex:
        replies: list[shmex.Reply] = []
        caller = threading.Thread(
            target=lambda: replies.append(ex.execute("train", W, task_id="t-kill")), daemon=True
        )
        caller.start()
        first = _spawn(HANGING_AGENT, link, tmp_path)
        try:
            assert _line(first) == f"GOT t-kill {float(W['w'].sum())}"
        finally:
            _kill(first)
        second = _spawn(ECHO_AGENT, link, tmp_path)
        try:
            assert _line(second) == "GOT t-kill"  # the same task, redelivered
            assert second.wait(timeout=30) == 0
        finally:
            if second.poll() is None:
                _kill(second)
            elif second.stdout is not None:
                second.stdout.close()
        caller.join(30)
        assert not caller.is_alive()
        assert ex.redeliveries == 1
    (reply,) = replies
    assert reply.rc == "OK" and reply.task_id == "t-kill"
    np.testing.assert_array_equal(reply.data["w"], W["w"] * 2)


def _wait_for(predicate: Any, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_sigkill_of_the_exchanger_is_reported_and_the_agent_reattaches(
    link: tuple[str, str], tmp_path: Any, peer: Any
) -> None:
    proc = _spawn(EXCHANGER, link, tmp_path)
    try:
        assert _line(proc) == "READY"
        agent = shmex.Agent(*link, attach_timeout=20)
        assert agent.status == "connected"
    finally:
        _kill(proc)
    with agent:
        assert _wait_for(lambda: agent.status == "lost"), agent.status
        # A new exchanger on the same name (the dead one's segment is reclaimed).
        with shmex.Exchanger(*link) as ex:
            assert _wait_for(lambda: agent.status == "connected"), agent.status
            answered = threading.Thread(target=echo, args=(agent,), daemon=True)
            answered.start()
            reply = ex.execute("train", W)
            answered.join(20)
    assert reply.rc == "OK"
    np.testing.assert_array_equal(reply.data["w"], W["w"])
