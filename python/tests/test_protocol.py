"""Protocol behaviour from Python: abort, timeout, close/bye, call state, Ctrl-C, bad input."""

from __future__ import annotations

import _thread
import threading
import time
from typing import Any

import numpy as np
import pytest
from conftest import echo

import shmex

W = {"w": np.arange(16, dtype=np.float32)}


def test_abort_event_aborts_the_task(link: tuple[str, str], peer: Any) -> None:
    fetched = threading.Event()

    def trainer(agent: shmex.Agent) -> tuple[bool, bool]:
        task = agent.get_task(timeout=20)
        assert task is not None
        fetched.set()
        deadline = time.monotonic() + 20
        while not task.aborted and time.monotonic() < deadline:
            time.sleep(0.01)
        return task.aborted, agent.submit_result(task.data)

    abort = threading.Event()
    with shmex.Exchanger(*link) as ex:
        p = peer(link, trainer)

        def abort_when_fetched() -> None:
            fetched.wait(20)
            abort.set()

        threading.Thread(target=abort_when_fetched, daemon=True).start()
        reply = ex.execute("train", W, abort=abort)
        assert reply.rc == "TASK_ABORTED" and reply.data is None
        assert p.join() == (True, False)


def test_timeout_ends_the_task_with_TIMEOUT(link: tuple[str, str], peer: Any) -> None:
    def trainer(agent: shmex.Agent) -> bool:
        task = agent.get_task(timeout=20)
        assert task is not None
        while not task.aborted:
            time.sleep(0.01)
        return True

    with shmex.Exchanger(*link) as ex:
        p = peer(link, trainer)
        reply = ex.execute("train", W, timeout=0.3)
        assert reply.rc == "TIMEOUT"
        assert p.join()


def test_close_says_bye_and_the_agent_raises_AgentClosed(link: tuple[str, str], peer: Any) -> None:
    attached = threading.Event()

    def trainer(agent: shmex.Agent) -> str:
        attached.set()
        with pytest.raises(shmex.AgentClosed):
            agent.get_task(timeout=20)
        with pytest.raises(shmex.AgentClosed):
            agent.get_task(timeout=0)
        return agent.status

    ex = shmex.Exchanger(*link)
    p = peer(link, trainer)
    assert attached.wait(20)
    time.sleep(0.1)
    ex.close()
    ex.close()  # a second close does nothing
    assert p.join() == "closed"
    assert ex.execute("train", W).rc == "TASK_ABORTED"


def test_agent_close_then_calls_raise_AgentClosed(link: tuple[str, str]) -> None:
    with shmex.Exchanger(*link):
        agent = shmex.Agent(*link, attach_timeout=10)
        agent.close()
        with pytest.raises(shmex.AgentClosed):
            agent.get_task(timeout=0)
        with pytest.raises(shmex.AgentClosed):
            agent.submit_result(W)
        assert issubclass(shmex.AgentClosed, shmex.ShmexError)


def test_get_task_twice_is_a_call_state_error(link: tuple[str, str], peer: Any) -> None:
    def trainer(agent: shmex.Agent) -> None:
        task = agent.get_task(timeout=20)
        assert task is not None
        with pytest.raises(shmex.CallStateError):
            agent.get_task(timeout=0)
        assert agent.submit_result(task.data)

    with shmex.Exchanger(*link) as ex:
        p = peer(link, trainer)
        assert ex.execute("train", W).rc == "OK"
        p.join()


def test_get_task_times_out_with_none(link: tuple[str, str]) -> None:
    with shmex.Exchanger(*link), shmex.Agent(*link, attach_timeout=10) as agent:
        assert agent.get_task(timeout=0) is None
        assert agent.get_task(timeout=0.1) is None


def test_result_rc_and_meta_reach_the_exchanger(link: tuple[str, str], peer: Any) -> None:
    def trainer(agent: shmex.Agent) -> shmex.Task:
        task = agent.get_task(timeout=20)
        assert task is not None
        agent.submit_result(None, {"why": "stopped"}, return_code="EXECUTION_EXCEPTION")
        return task

    with shmex.Exchanger(*link) as ex:
        p = peer(link, trainer)
        reply = ex.execute("train", W, {"lr": 0.1}, task_id="t-1", current_round=2, total_round=5)
        task = p.join()
    assert reply.rc == "EXECUTION_EXCEPTION" and reply.task_id == "t-1"
    assert (task.task_id, task.task_name) == ("t-1", "train")
    assert (task.current_round, task.total_round) == (2, 5)
    assert task.meta["lr"] == 0.1 and task.meta["data_kind"] == "WEIGHTS"


def test_result_data_kind_follows_meta(link: tuple[str, str], peer: Any) -> None:
    def trainer(agent: shmex.Agent) -> None:
        task = agent.get_task(timeout=20)
        assert task is not None
        agent.submit_result(task.data, {"data_kind": "WEIGHT_DIFF"})

    with shmex.Exchanger(*link) as ex:
        p = peer(link, trainer)
        reply = ex.execute("train", W)
        p.join()
    assert reply.rc == "OK" and reply.data_kind == "WEIGHT_DIFF"


def _interrupt_soon(delay: float = 0.3) -> None:
    threading.Timer(delay, _thread.interrupt_main).start()


def test_ctrl_c_interrupts_execute_and_aborts_the_task(link: tuple[str, str], peer: Any) -> None:
    def trainer(agent: shmex.Agent) -> bool:
        task = agent.get_task(timeout=20)
        assert task is not None
        while not task.aborted:
            time.sleep(0.01)
        return True

    with shmex.Exchanger(*link) as ex:
        p = peer(link, trainer)
        _interrupt_soon()
        with pytest.raises(KeyboardInterrupt):
            ex.execute("train", W)
        assert p.join()  # the agent saw the abort
        # The exchanger is free for the next task.
        p = peer(link, echo)
        assert ex.execute("train", W).rc == "OK"
        p.join()


def test_ctrl_c_interrupts_get_task(link: tuple[str, str]) -> None:
    with shmex.Exchanger(*link), shmex.Agent(*link, attach_timeout=10) as agent:
        _interrupt_soon()
        with pytest.raises(KeyboardInterrupt):
            agent.get_task()


def test_ctrl_c_interrupts_attach(link: tuple[str, str]) -> None:
    _interrupt_soon()
    with pytest.raises(KeyboardInterrupt):
        shmex.Agent(*link, attach_timeout=1.5)
    time.sleep(1.6)  # the abandoned attach ends on its own


def test_attach_without_exchanger_times_out(link: tuple[str, str]) -> None:
    with pytest.raises(shmex.ShmexError, match="no exchanger"):
        shmex.Agent(*link, attach_timeout=0.2)


def test_second_exchanger_on_a_live_link_fails(link: tuple[str, str]) -> None:
    with shmex.Exchanger(*link), pytest.raises(shmex.ShmexError):
        shmex.Exchanger(*link)


BAD_EXECUTE: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"data": {"w": np.array([object()])}}, TypeError, "'w'.*object"),
    ({"data": {"s": np.zeros(2, dtype=[("a", "f4")])}}, TypeError, "'s'.*structured"),
    ({"data": {"c": np.zeros(2, dtype=np.complex64)}}, TypeError, "'c'.*not supported"),
    ({"data": {3: np.zeros(2)}}, TypeError, "names must be strings"),
    ({"data": {"w": [1, 2, 3]}}, TypeError, "'w'.*numpy array"),
    ({"data": [np.zeros(2)]}, TypeError, "data must be"),
    ({"data": {"w": np.zeros((1,) * 9)}}, ValueError, "'w'.*9 dimensions"),
    ({"data": {"": np.zeros(2)}}, ValueError, "names must not be empty"),
    ({"meta": {"x": object()}}, TypeError, "JSON"),
    ({"meta": {"x": float("nan")}}, ValueError, "JSON"),
    ({"meta": {1: 2}}, TypeError, "meta keys"),
    ({"meta": [1]}, TypeError, "meta must be a dict"),
    ({"timeout": -1.0}, ValueError, "timeout"),
    ({"timeout": "1"}, TypeError, "timeout"),
    ({"task_name": 5}, TypeError, "task_name"),
    ({"task_id": 5}, TypeError, "task_id"),
    ({"data_kind": "WEIGHTZ"}, ValueError, "data kind"),
    ({"data": b"x", "data_kind": "WEIGHTS"}, ValueError, "APP_DEFINED"),
    ({"current_round": 1.5}, TypeError, "current_round"),
    ({"abort": True}, TypeError, "is_set"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_EXECUTE)
def test_bad_input_raises_and_sends_nothing(
    link: tuple[str, str], kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with shmex.Exchanger(*link) as ex, shmex.Agent(*link, attach_timeout=10) as agent:
        args: dict[str, Any] = {"task_name": "train", "data": W, **kwargs}
        with pytest.raises(error, match=match):
            ex.execute(**args)
        assert agent.get_task(timeout=0.2) is None  # nothing was sent
        # The same calls on the agent side fail the same way and send nothing.
        if set(kwargs) <= {"data", "meta", "data_kind"}:
            with pytest.raises(error, match=match):
                agent.submit_result(
                    kwargs.get("data", W), kwargs.get("meta"), data_kind=kwargs.get("data_kind")
                )


def test_bad_options_raise(link: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match="agent_connection_timeout"):
        shmex.Exchanger(*link, agent_connection_timeout=-1)
    with pytest.raises(ValueError, match="on_agent_restart"):
        shmex.Exchanger(*link, on_agent_restart="maybe")
    with pytest.raises(TypeError, match="site"):
        shmex.Exchanger(1, "a")
    with pytest.raises(ValueError):
        shmex.Exchanger("bad/site", "a")
    with pytest.raises(ValueError, match="attach_timeout"):
        shmex.Agent(*link, attach_timeout=float("nan"))
    with pytest.raises(ValueError, match="return code"):
        with shmex.Exchanger(*link), shmex.Agent(*link, attach_timeout=10) as agent:
            agent.submit_result(W, return_code="FINE")


def test_objects_are_shared_between_threads(link: tuple[str, str], peer: Any) -> None:
    with shmex.Exchanger(*link) as ex:
        p = peer(link, lambda agent: echo(agent, count=4))
        replies: list[str] = []
        lock = threading.Lock()

        def caller() -> None:
            for _ in range(2):
                while True:
                    rc = ex.execute("train", W).rc
                    if rc != "BAD_REQUEST_DATA":  # another thread's task is in flight
                        break
                    time.sleep(0.005)
                with lock:
                    replies.append(rc)

        threads = [threading.Thread(target=caller) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        p.join()
    assert replies == ["OK"] * 4
