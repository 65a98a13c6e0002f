"""Loans both ways (filled in place, data checked), and their misuse: a clear exception."""

from __future__ import annotations

import _thread
import gc
import threading
import time
from typing import Any

import numpy as np
import pytest
from conftest import echo

import shmex

W = {"w": np.arange(16, dtype=np.float32)}


def test_result_loan_round_trip(link: tuple[str, str], peer: Any) -> None:
    def trainer(agent: shmex.Agent) -> tuple[bool, str]:
        task = agent.get_task(timeout=20)
        assert task is not None
        spec = {"w": (task.data["w"].shape, np.float32), "n": ((2, 3), "i64")}
        with agent.result_loan(spec, {"loss": 0.25}, data_kind="WEIGHT_DIFF") as loan:
            assert loan.task_id == task.task_id and loan.names == ["w", "n"]
            np.multiply(task.data["w"], 2, out=loan["w"])
            loan["n"][...] = np.arange(6).reshape(2, 3)
            assert loan.state == "open"
            accepted = loan.commit()
        return accepted, loan.state

    with shmex.Exchanger(*link) as ex:
        p = peer(link, trainer)
        reply = ex.execute("train", W, task_id="t-1")
        assert p.join() == (True, "committed")
    assert reply.rc == "OK" and reply.data_kind == "WEIGHT_DIFF"
    assert reply.meta["loss"] == 0.25
    np.testing.assert_array_equal(reply.data["w"], W["w"] * 2)
    np.testing.assert_array_equal(reply.data["n"], np.arange(6).reshape(2, 3))
    assert reply.dtypes == {"w": "f32", "n": "i64"}


def test_task_loan_round_trip(link: tuple[str, str], peer: Any) -> None:
    with shmex.Exchanger(*link) as ex:
        p = peer(link, echo)
        spec = {"a": ((3, 4), np.float64), "b": (5, np.uint8), "e": ((0,), np.int32)}
        with ex.task_loan("train", spec, {"lr": 0.5}, current_round=1, total_round=3) as loan:
            arrays = loan.arrays
            arrays["a"][...] = np.arange(12).reshape(3, 4) / 3
            arrays["b"][...] = [1, 2, 3, 4, 255]
            assert arrays["e"].shape == (0,)
            del arrays
            reply = loan.execute()
        (task,) = p.join()
    assert task.task_id == loan.task_id and task.meta["lr"] == 0.5
    assert (task.current_round, task.total_round) == (1, 3)
    assert reply.rc == "OK"
    np.testing.assert_array_equal(reply.data["a"], np.arange(12).reshape(3, 4) / 3)
    np.testing.assert_array_equal(reply.data["b"], np.array([1, 2, 3, 4, 255], np.uint8))
    assert reply.data["e"].shape == (0,)


def test_opaque_loans_both_ways(link: tuple[str, str], peer: Any) -> None:
    def trainer(agent: shmex.Agent) -> None:
        task = agent.get_task(timeout=20)
        assert task is not None and task.data == b"hello"
        with agent.result_loan(None, opaque=6) as loan:
            loan.opaque[...] = np.frombuffer(b"world!", np.uint8)
            assert loan.commit()

    with shmex.Exchanger(*link) as ex:
        p = peer(link, trainer)
        with ex.task_loan("train", None, opaque=5) as loan:
            loan.opaque[...] = np.frombuffer(b"hello", np.uint8)
            reply = loan.execute()
        p.join()
    assert reply.rc == "OK" and reply.data == b"world!" and reply.data_kind == "APP_DEFINED"


def _agent_with_task(link: tuple[str, str], ex: shmex.Exchanger) -> tuple[Any, shmex.Agent]:
    """Sends a task from a thread; returns (the thread's reply holder, the attached agent)."""
    holder: dict[str, Any] = {}

    def run() -> None:
        holder["reply"] = ex.execute("train", W)

    agent = shmex.Agent(*link, attach_timeout=10)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    holder["thread"] = thread
    return holder, agent


def test_commit_with_a_live_array_is_refused(link: tuple[str, str]) -> None:
    with shmex.Exchanger(*link) as ex:
        holder, agent = _agent_with_task(link, ex)
        with agent:
            task = agent.get_task(timeout=20)
            assert task is not None
            loan = agent.result_loan({"w": (16, np.float32)})
            w = loan["w"]
            view = w[2:5]  # views keep the lease too
            w[...] = 7
            del w
            with pytest.raises(shmex.CallStateError, match="still referenced") as info:
                loan.commit()
            assert info.value.code == shmex.ErrorCode.CALL_STATE
            mv = memoryview(view)
            dl = np.from_dlpack(view)
            del view
            with pytest.raises(shmex.CallStateError):
                loan.commit()
            del mv
            with pytest.raises(shmex.CallStateError):
                loan.commit()  # the DLPack import still holds it
            del dl
            assert loan.commit()  # nothing references the ring space any more
            with pytest.raises(shmex.CallStateError, match="already committed"):
                loan.commit()  # twice
            with pytest.raises(shmex.CallStateError, match="already committed"):
                loan["w"]  # no new array after the commit
            holder["thread"].join(20)
    assert holder["reply"].rc == "OK"
    np.testing.assert_array_equal(holder["reply"].data["w"], np.full(16, 7, np.float32))


def test_arrays_in_a_reference_cycle_are_collected_before_commit(link: tuple[str, str]) -> None:
    with shmex.Exchanger(*link) as ex:
        holder, agent = _agent_with_task(link, ex)
        with agent:
            assert agent.get_task(timeout=20) is not None
            loan = agent.result_loan({"w": (16, np.float32)})
            cycle: list[Any] = [loan["w"]]
            cycle.append(cycle)
            cycle[0][...] = 1
            del cycle
            assert loan.commit()
            holder["thread"].join(20)
    assert holder["reply"].rc == "OK"


def test_abandon_with_a_live_array_keeps_the_space_until_it_is_gone(
    link: tuple[str, str],
) -> None:
    with shmex.Exchanger(*link) as ex:
        holder, agent = _agent_with_task(link, ex)
        with agent:
            assert agent.get_task(timeout=20) is not None
            with agent.result_loan({"w": (16, np.float32)}) as loan:
                w = loan["w"]
            # Left without commit: abandoned, but `w` still views the reserved space.
            assert loan.state == "abandoned (arrays alive)"
            w[...] = 3  # still the loan's own memory: harmless
            with pytest.raises(shmex.CallStateError, match="abandoned"):
                loan.commit()
            # The loan still holds the task (and the sending half): refused.
            assert agent.submit_result(W) is False
            del w
            gc.collect()
            assert loan.state == "abandoned"
            # The task stayed answerable.
            assert agent.submit_result({"w": W["w"] + 1})
            holder["thread"].join(20)
    np.testing.assert_array_equal(holder["reply"].data["w"], W["w"] + 1)


def test_commit_after_close_raises_agent_closed(link: tuple[str, str]) -> None:
    with shmex.Exchanger(*link) as ex:
        holder, agent = _agent_with_task(link, ex)
        assert agent.get_task(timeout=20) is not None
        loan = agent.result_loan({"w": (16, np.float32)})
        loan["w"][...] = 0
        agent.close()
        with pytest.raises(shmex.AgentClosed) as info:
            loan.commit()
        assert info.value.code == "CLOSED"
        with pytest.raises(shmex.AgentClosed):
            agent.result_loan({"w": (16, np.float32)})
        ex.close()
        holder["thread"].join(20)
    assert holder["reply"].rc == "TASK_ABORTED"


def test_result_loan_without_a_task_and_a_second_loan(link: tuple[str, str]) -> None:
    with shmex.Exchanger(*link) as ex:
        holder, agent = _agent_with_task(link, ex)
        with agent:
            assert agent.get_task(timeout=20) is not None
            first = agent.result_loan({"w": (16, np.float32)})
            with pytest.raises(shmex.CallStateError) as info:
                agent.result_loan({"w": (16, np.float32)})
            assert info.value.code == "CALL_STATE"
            first["w"][...] = 5
            assert first.commit()
            # Answered: no task to answer any more.
            with pytest.raises(shmex.CallStateError):
                agent.result_loan({"w": (16, np.float32)})
            holder["thread"].join(20)
    assert holder["reply"].rc == "OK"


def test_task_loan_misuse(link: tuple[str, str], peer: Any) -> None:
    with shmex.Exchanger(*link) as ex:
        loan = ex.task_loan("train", {"w": (16, np.float32)})
        # One task in flight: a second loan and execute are refused.
        with pytest.raises(shmex.CallStateError) as info:
            ex.task_loan("train", {"w": (16, np.float32)})
        assert info.value.code == "CALL_STATE"
        assert getattr(info.value, "rc", None) == "BAD_REQUEST_DATA"
        assert ex.execute("train", W).rc == "BAD_REQUEST_DATA"
        w = loan["w"]
        w[...] = 2
        with pytest.raises(shmex.CallStateError, match="still referenced"):
            loan.execute()
        del w
        p = peer(link, echo)
        reply = loan.execute()
        assert reply.rc == "OK"
        np.testing.assert_array_equal(reply.data["w"], np.full(16, 2, np.float32))
        with pytest.raises(shmex.CallStateError, match="already committed"):
            loan.execute()
        p.join()
        # An abandoned loan ends its task: the next one goes.
        with ex.task_loan("train", {"w": (16, np.float32)}):
            pass
        p = peer(link, echo)
        assert ex.execute("train", W).rc == "OK"
        p.join()
        ex.close()
        with pytest.raises(shmex.ShmexError) as closed:
            ex.task_loan("train", {"w": (16, np.float32)})
        assert closed.value.code == "CLOSED"
        assert getattr(closed.value, "rc", None) == "TASK_ABORTED"


BAD_SPECS: list[tuple[Any, type[Exception], str]] = [
    ({"w": ((2,), object)}, TypeError, "'w'.*object"),
    ({"w": ((2,), "float32")}, TypeError, "shmex dtype name"),
    ({"w": ((2,), np.complex64)}, TypeError, "'w'.*not supported"),
    ({"w": ((-1,), np.float32)}, ValueError, "negative"),
    ({"w": ((1,) * 9, np.float32)}, ValueError, "9 dimensions"),
    ({"w": ((1.5,), np.float32)}, TypeError, "ints"),
    ({"w": (2,)}, TypeError, "shape, dtype"),
    ({3: (2, np.float32)}, TypeError, "names must be strings"),
    ([("w", 2)], TypeError, "tensors must be a dict"),
    ({"": (2, np.float32)}, ValueError, "names must not be empty"),
]


@pytest.mark.parametrize(("spec", "error", "match"), BAD_SPECS)
def test_bad_specs_raise_and_send_nothing(
    link: tuple[str, str], spec: Any, error: type[Exception], match: str
) -> None:
    with shmex.Exchanger(*link) as ex, shmex.Agent(*link, attach_timeout=10) as agent:
        with pytest.raises(error, match=match):
            ex.task_loan("train", spec)
        assert agent.get_task(timeout=0.1) is None
        p_reply = ex.execute("train", W, timeout=0.1)  # the link is still free
        assert p_reply.rc in ("TIMEOUT", "OK")


def test_too_large_for_the_ring_is_refused(link: tuple[str, str]) -> None:
    cap = 1 << 20
    with shmex.Exchanger(*link, task_ring_capacity=cap) as ex:
        with pytest.raises(ValueError, match="one ring record") as info:
            ex.task_loan("train", {"w": (cap, np.float32)})
        assert info.value.code == "TOO_LARGE"  # type: ignore[attr-defined]
        # Nothing is in flight.
        with ex.task_loan("train", {"w": (16, np.float32)}) as loan:
            assert loan.state == "open"


def test_bf16_loan(link: tuple[str, str], peer: Any) -> None:
    with shmex.Exchanger(*link) as ex:
        p = peer(link, echo)
        with ex.task_loan("train", {"h": (4, "bf16")}) as loan:
            h = loan["h"]
            bits = np.array([0x3F80, 0x4000, 0xC040, 0], np.uint16)  # 1, 2, -3, 0
            h.view(np.uint16)[...] = bits
            del h
            reply = loan.execute()
        p.join()
    assert reply.dtypes["h"] == "bf16"
    np.testing.assert_array_equal(reply.data["h"].view(np.uint16), bits)


def test_error_codes_are_listed() -> None:
    names = {k for k in vars(shmex.ErrorCode) if k.isupper()}
    assert names == set(shmex._shmex.ERROR_CODES)
    assert shmex.ShmexError("x").code is None


def test_ctrl_c_interrupts_a_task_loan_execute_and_aborts_the_task(
    link: tuple[str, str], peer: Any
) -> None:
    def trainer(agent: shmex.Agent) -> bool:
        task = agent.get_task(timeout=20)
        assert task is not None
        while not task.aborted:
            time.sleep(0.01)
        return True

    with shmex.Exchanger(*link) as ex:
        p = peer(link, trainer)
        loan = ex.task_loan("train", {"w": (16, np.float32)})
        loan["w"][...] = 1
        threading.Timer(0.3, _thread.interrupt_main).start()
        with pytest.raises(KeyboardInterrupt):
            loan.execute()
        assert p.join()  # the agent saw the abort
        assert loan.state == "committed"
        p = peer(link, echo)
        assert ex.execute("train", W).rc == "OK"  # the exchanger is free again
        p.join()


# ---- receive_in_place: loans read where they were written (issue 12) ----------------------

RING = 1 << 20
BIG = 150 << 10  # float32 elements: 600 KiB, two do not fit a 1 MiB ring


def test_receive_in_place_both_ways_with_loans(link: tuple[str, str]) -> None:
    got: dict[str, Any] = {}

    def trainer() -> None:
        with shmex.Agent(*link, attach_timeout=10, receive_in_place=True) as agent:
            task = agent.get_task(timeout=20)
            assert task is not None
            got["task_in_place"] = task.in_place
            got["task_sum"] = float(task.data["w"].sum())
            with agent.result_loan({"w": ((BIG,), np.float32)}) as loan:
                np.add(task.data["w"], 1, out=loan["w"])
                del task
                got["accepted"] = loan.commit()

    with shmex.Exchanger(
        *link, task_ring_capacity=RING, result_ring_capacity=RING, receive_in_place=True
    ) as ex:
        agent = threading.Thread(target=trainer, daemon=True)
        agent.start()
        with ex.task_loan("train", {"w": ((BIG,), np.float32)}) as loan:
            loan["w"][...] = 2.0
            reply = loan.execute(timeout=30)
        agent.join(30)
        assert got == {"task_in_place": True, "task_sum": 2.0 * BIG, "accepted": True}
        assert reply.rc == "OK" and reply.in_place
        np.testing.assert_array_equal(reply.data["w"], np.full(BIG, 3.0, np.float32))
        assert not reply.data["w"].flags.writeable


def test_a_task_viewed_in_place_holds_its_ring_space_until_its_arrays_are_gone(
    link: tuple[str, str],
) -> None:
    def trainer(agent: shmex.Agent) -> list[bool]:
        seen = []
        first = agent.get_task(timeout=20)
        assert first is not None
        kept = first.data["w"]
        seen.append(first.in_place)
        agent.submit_result({"w": np.zeros(1, np.float32)})
        del first
        # The second 600 KiB task cannot come while `kept` views the first.
        assert agent.get_task(timeout=0.3) is None
        del kept
        gc.collect()
        second = agent.get_task(timeout=20)
        assert second is not None and second.task_id == "t2"
        seen.append(second.in_place)
        agent.submit_result({"w": np.zeros(1, np.float32)})
        return seen

    with shmex.Exchanger(*link, task_ring_capacity=RING) as ex:
        result: dict[str, Any] = {}

        def run() -> None:
            with shmex.Agent(*link, attach_timeout=10, receive_in_place=True) as agent:
                result["seen"] = trainer(agent)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        big = {"w": np.ones(BIG, np.float32)}
        assert ex.execute("train", big, task_id="t1", timeout=30).rc == "OK"
        assert ex.execute("train", big, task_id="t2", timeout=30).rc == "OK"
        t.join(30)
        assert result["seen"] == [True, True]


def test_receive_in_place_is_off_by_default_and_checked(link: tuple[str, str], peer: Any) -> None:
    with shmex.Exchanger(*link) as ex:
        p = peer(link, echo)
        reply = ex.execute("train", W)
        (task,) = p.join()
        assert not reply.in_place and not task.in_place
        for bad, error in [(-1, ValueError), (1.5, TypeError), (True, TypeError)]:
            with pytest.raises(error, match="expected_message_len"):
                shmex.Agent(*link, attach_timeout=1, expected_message_len=bad)
