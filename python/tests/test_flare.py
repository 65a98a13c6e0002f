"""shmex.flare: FLARE's IPCAgent API, the Client API module, and ShmexExchanger as an executor."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

import shmex
import shmex.flare.client as flare
from shmex.flare import AgentClosed, CallStateError, FLModel, IPCAgent, ParamsType, TaskResult
from shmex.flare._model import model_of_task, result_of_model

W = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}


def started(link: tuple[str, str]) -> IPCAgent:
    # A receive buffer reserved up front (shmex's own option) changes nothing else.
    agent = IPCAgent("", link[0], link[1], "", attach_timeout=10, expected_message_len=1 << 20)
    agent.start()
    return agent


class Thread:
    """Runs ``body()`` in a thread; ``join`` returns its value or raises its error."""

    def __init__(self, body: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = body()
            except BaseException as e:
                self.error = e

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self) -> Any:
        self._thread.join(30)
        assert not self._thread.is_alive(), "thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


# ---- IPCAgent ------------------------------------------------------------------------------


def test_ipc_agent_get_task_submit_result_stop(link: tuple[str, str]) -> None:
    def trainer() -> tuple[Any, ...]:
        agent = started(link)
        task = agent.get_task(timeout=20)
        assert task is not None and task.status == task.FETCHED and not task.aborted
        got = (task.task_name, dict(task.meta), task.data["w"].copy())
        ok = agent.submit_result(
            TaskResult(meta={"n": 1}, data={"w": task.data["w"] * 2, "count": 3})
        )
        with pytest.raises(AgentClosed):
            agent.get_task(timeout=20)  # the exchanger says bye
        agent.stop()
        with pytest.raises(AgentClosed):
            agent.get_task()
        return got, ok

    with shmex.Exchanger(*link) as ex:
        t = Thread(trainer)
        reply = ex.execute("train", W, {"lr": 0.5}, current_round=1, total_round=3)
        assert reply.rc == "OK" and reply.data_kind == "WEIGHTS"
        np.testing.assert_array_equal(reply.data["w"], W["w"] * 2)
        assert reply.data["count"].shape == () and int(reply.data["count"]) == 3
        assert reply.meta["n"] == 1
    (name, meta, w), ok = t.join()
    assert name == "train" and ok
    assert meta == {"lr": 0.5, "data_kind": "WEIGHTS", "current_round": 1, "total_round": 3}
    np.testing.assert_array_equal(w, W["w"])


def test_get_task_twice_is_a_call_state_error(link: tuple[str, str]) -> None:
    def trainer() -> bool:
        agent = started(link)
        assert agent.get_task(timeout=20) is not None
        with pytest.raises(CallStateError):
            agent.get_task(timeout=1)
        accepted = agent.submit_result(TaskResult({}, W))
        agent.stop()
        return accepted

    with shmex.Exchanger(*link) as ex:
        t = Thread(trainer)
        assert ex.execute("train", W).rc == "OK"
    assert t.join()


def test_aborted_task_is_flagged_and_its_result_refused(link: tuple[str, str]) -> None:
    fetched = threading.Event()

    def trainer() -> tuple[bool, bool]:
        agent = started(link)
        task = agent.get_task(timeout=20)
        assert task is not None
        fetched.set()
        deadline = time.monotonic() + 20
        while not task.aborted and time.monotonic() < deadline:
            time.sleep(0.01)
        result = task.aborted, agent.submit_result(TaskResult({}, W))
        agent.stop()
        return result

    abort = threading.Event()
    with shmex.Exchanger(*link) as ex:
        t = Thread(trainer)

        def abort_when_fetched() -> None:
            fetched.wait(20)
            abort.set()

        threading.Thread(target=abort_when_fetched, daemon=True).start()
        assert ex.execute("train", W, abort=abort).rc == "TASK_ABORTED"
    assert t.join() == (True, False)


def test_ipc_agent_arguments_are_checked_as_flare_checks_them(link: tuple[str, str]) -> None:
    agent = IPCAgent("", link[0], link[1], "")
    with pytest.raises(CallStateError):
        agent.get_task(timeout=1)  # not started
    with pytest.raises(ValueError):
        agent.get_task(timeout=0)
    with pytest.raises(TypeError):
        agent.get_task(timeout="1")
    with pytest.raises(ValueError, match=r"holds '\.'"):
        IPCAgent("", "site.1", "a", "")
    with pytest.raises(ValueError, match="agent id"):
        IPCAgent("", "site-1", "", "")
    with pytest.raises(TypeError):
        TaskResult(meta=[1], data={})
    with pytest.raises(TypeError):
        TaskResult(meta={}, data={}, return_code=1)
    assert TaskResult(None, None).data == {} and TaskResult(None, None).return_code == "OK"


def test_ipc_agent_takes_its_link_from_the_environment(
    link: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHMEX_SITE", link[0])
    monkeypatch.setenv("SHMEX_AGENT_ID", link[1])
    agent = IPCAgent()
    assert (agent.flare_site_name, agent.agent_id) == link


# ---- the Client API ------------------------------------------------------------------------


def test_client_api_receive_send_round_trip(link: tuple[str, str]) -> None:
    def trainer() -> list[Any]:
        api = flare.init(site=link[0], agent_id=link[1], attach_timeout=10)
        seen = []
        try:
            while flare.is_running():
                model = flare.receive()
                assert model is not None and model is flare.receive()  # cached until send
                seen.append(
                    (model.params_type, model.current_round, model.total_rounds, dict(model.meta))
                )
                assert flare.is_train() and flare.get_task_name() == "train"
                assert flare.system_info() == {"job_id": "J1", "site_name": link[0]}
                params = {k: v + 1 for k, v in model.params.items()}
                flare.send(FLModel(params=params, metrics={"acc": 0.75}, meta={"k": "v"}))
                assert model.params is None  # clear_cache, as FLARE
            assert not flare.is_running() and flare.receive() is None
        finally:
            flare.shutdown(api)
        return seen

    with shmex.Exchanger(*link) as ex:
        t = Thread(trainer)
        for rnd in range(2):
            reply = ex.execute("train", W, {"job_id": "J1"}, current_round=rnd, total_round=2)
            assert reply.rc == "OK" and reply.data_kind == "WEIGHTS"
            np.testing.assert_array_equal(reply.data["w"], W["w"] + 1)
            assert reply.meta["initial_metrics"] == {"acc": 0.75} and reply.meta["k"] == "v"
    seen = t.join()
    assert [(p, c, n) for p, c, n, _ in seen] == [(ParamsType.FULL, 0, 2), (ParamsType.FULL, 1, 2)]
    assert seen[0][3] == {"job_id": "J1", "site_name": link[0]}


def test_client_api_errors(link: tuple[str, str]) -> None:
    with pytest.raises(RuntimeError, match="init"):
        flare.receive()
    with shmex.Exchanger(*link):
        api = flare.ClientAPI(*link, attach_timeout=10)
        try:
            with pytest.raises(RuntimeError, match="receive"):
                api.send(FLModel(params=W))
            with pytest.raises(TypeError):
                api.send({"w": 1})
            assert api.receive(timeout=0.05) is None
        finally:
            api.shutdown()
        assert not api.is_running()


def test_fl_model_maps_to_the_dxo_as_flare_maps_it() -> None:
    data, meta, kind = result_of_model(FLModel(params=W, params_type="DIFF", current_round=2))
    assert kind == "WEIGHT_DIFF" and meta == {"data_kind": "WEIGHT_DIFF", "current_round": 2}
    data, meta, kind = result_of_model(FLModel(metrics={"loss": 0.25}))
    assert kind == "METRICS" and data == {"loss": 0.25}
    with pytest.raises(ValueError):
        result_of_model(FLModel())
    m = model_of_task({"loss": np.array(0.5)}, {"data_kind": "METRICS"}, "METRICS")
    assert m.params is None and m.metrics == {"loss": 0.5}
    m = model_of_task(W, {"data_kind": "WEIGHT_DIFF", "total_round": 4}, "WEIGHT_DIFF")
    assert m.params_type == ParamsType.DIFF and m.total_rounds == 4 and m.meta == {}
    m = model_of_task(W, {"initial_metrics": {"a": 1}}, "WEIGHTS")
    assert m.params_type == ParamsType.FULL and m.metrics == {"a": 1}


# ---- ShmexExchanger ------------------------------------------------------------------------


def _flare() -> Any:
    return pytest.importorskip("nvflare", reason="nvflare is not installed")


def _fl_ctx(site: str) -> Any:
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext

    ctx = FLContext()
    ctx.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=False, sticky=False)
    return ctx


def test_shmex_exchanger_executes_a_dxo_task(link: tuple[str, str]) -> None:
    _flare()
    from nvflare.apis.dxo import DXO, from_shareable
    from nvflare.apis.event_type import EventType
    from nvflare.apis.shareable import Shareable
    from nvflare.apis.signal import Signal
    from nvflare.app_common.app_constant import AppConstants

    from shmex.flare import ShmexExchanger

    site, agent_id = link
    executor = ShmexExchanger(
        agent_id=agent_id, agent_heartbeat_timeout=30.0, expected_message_len=1 << 20
    )
    assert executor.agent_heartbeat_timeout == 30.0 and executor.train_command is None
    assert executor.expected_message_len == 1 << 20
    ctx = _fl_ctx(site)
    executor.handle_event(EventType.START_RUN, ctx)

    def trainer() -> list[dict[str, Any]]:
        agent = started(link)
        metas = []
        while True:
            try:
                task = agent.get_task(timeout=20)
            except AgentClosed:
                break
            assert task is not None
            metas.append(dict(task.meta))
            if task.task_name == "validate":
                agent.submit_result(TaskResult({"data_kind": "METRICS"}, {"acc": 0.5}))
            else:
                agent.submit_result(TaskResult({"NUM_STEPS_CURRENT_ROUND": 2}, task.data))
        agent.stop()
        return metas

    t = Thread(trainer)
    task = DXO("WEIGHTS", data=dict(W), meta={"x": 1}).to_shareable()
    task.set_header(AppConstants.CURRENT_ROUND, 1)
    task.set_header(AppConstants.NUM_ROUNDS, 2)
    result = executor.execute("train", task, ctx, Signal())
    assert result.get_return_code() == "OK"
    dxo = from_shareable(result)
    assert dxo.data_kind == "WEIGHTS" and dxo.meta["NUM_STEPS_CURRENT_ROUND"] == 2
    np.testing.assert_array_equal(dxo.data["w"], W["w"])

    result = executor.execute(
        "validate", DXO("WEIGHTS", data=dict(W)).to_shareable(), ctx, Signal()
    )
    dxo = from_shareable(result)
    assert dxo.data_kind == "METRICS" and dxo.data == {"acc": 0.5}

    app = DXO("APP_DEFINED", data={"blob": np.arange(4, dtype=np.uint8)}).to_shareable()
    assert from_shareable(executor.execute("app", app, ctx, Signal())).data_kind == "APP_DEFINED"

    assert executor.execute("train", Shareable(), ctx, Signal()).get_return_code() == (
        "BAD_TASK_DATA"
    )
    odd = DXO("WEIGHTS", data={"w": object()}).to_shareable()
    assert executor.execute("train", odd, ctx, Signal()).get_return_code() == "BAD_TASK_DATA"

    aborted = Signal()
    aborted.trigger("stop")
    assert executor.execute("train", task, ctx, aborted).get_return_code() == "TASK_ABORTED"

    executor.handle_event(EventType.END_RUN, ctx)
    metas = t.join()
    assert metas[0] == {
        "x": 1,
        "data_kind": "WEIGHTS",
        "current_round": 1,
        "total_round": 2,
        "job_id": "job-1",
        "site_name": site,
    }
    assert executor.execute("train", task, ctx, Signal()).get_return_code() == "TASK_ABORTED"


def test_importable_without_nvflare() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['nvflare'] = None\n"
        "import shmex.flare, shmex.flare.client as f\n"
        "m = f.FLModel(params={'w': 1}, current_round=0)\n"
        "assert m.params_type == 'FULL' and m.meta == {}, m\n"
        "try:\n    shmex.flare.ShmexExchanger\nexcept ImportError:\n    print('no executor')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "no executor"
