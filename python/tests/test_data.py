"""Every dtype and shape both ways, bit-exact; views, their lifetime, and zero-copy exports."""

from __future__ import annotations

import gc
import threading
from typing import Any

import numpy as np
import pytest
from conftest import echo, resend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmex
from shmex import _tensors

ml_dtypes: Any
try:
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None

NUMPY_DTYPES = {
    "f16": np.float16,
    "f32": np.float32,
    "f64": np.float64,
    "i8": np.int8,
    "i16": np.int16,
    "i32": np.int32,
    "i64": np.int64,
    "u8": np.uint8,
    "u16": np.uint16,
    "u32": np.uint32,
    "u64": np.uint64,
    "bool": np.bool_,
}
SHAPES = [(), (0,), (3, 0, 2), (7,), (2, 3), (1, 2, 1, 3, 1, 2, 1, 2)]


def random_array(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
    """Random bits of ``dtype`` (bf16: ``shmex.BF16`` of uint16 bits)."""
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype == "bf16":
        return shmex.BF16(rng.integers(0, 2**16, size=shape, dtype=np.uint16))
    raw = rng.integers(
        0, 256, size=(*shape, np.dtype(NUMPY_DTYPES[dtype]).itemsize), dtype=np.uint8
    )
    return raw.view(NUMPY_DTYPES[dtype]).reshape(shape)


def bits(value: Any) -> tuple[tuple[int, ...], bytes]:
    array = value.bits if isinstance(value, shmex.BF16) else value
    return array.shape, np.ascontiguousarray(array).tobytes()


def test_every_dtype_and_shape_round_trips_bit_exact(link: tuple[str, str], peer: Any) -> None:
    rng = np.random.default_rng(1)
    dtypes = [*NUMPY_DTYPES, "bf16"]
    data = {f"{d}-{i}": random_array(d, s, rng) for d in dtypes for i, s in enumerate(SHAPES)}
    with shmex.Exchanger(*link) as ex:
        p = peer(link, echo)
        reply = ex.execute("train", data, {"k": [1, 2.5, "x", None, True]})
        (task,) = p.join()
    assert reply.rc == "OK"
    assert task.meta["k"] == [1, 2.5, "x", None, True]
    for received in (task, reply):
        assert set(received.data) == set(data)
        for name, sent in data.items():
            got = received.data[name]
            assert received.dtypes[name] == name.split("-")[0]
            assert (got.shape, got.tobytes()) == bits(sent), name
            assert not got.flags.writeable


@pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes not installed")
def test_bf16_arrives_as_ml_dtypes_bfloat16(link: tuple[str, str], peer: Any) -> None:
    values = np.array([1.5, -2.0, 3.25], dtype=ml_dtypes.bfloat16)
    with shmex.Exchanger(*link) as ex:
        p = peer(link, echo)
        reply = ex.execute("train", {"b": values})
        p.join()
    assert reply.data["b"].dtype == np.dtype(ml_dtypes.bfloat16)
    assert reply.dtypes["b"] == "bf16"
    assert reply.data["b"].tobytes() == values.tobytes()


def test_bf16_without_ml_dtypes_is_uint16(
    link: tuple[str, str], peer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_tensors, "BFLOAT16", None)
    raw = np.array([0x3FC0, 0xC000], dtype=np.uint16)
    with shmex.Exchanger(*link) as ex:
        p = peer(link, echo)
        reply = ex.execute("train", {"b": shmex.BF16(raw)})
        p.join()
    assert reply.data["b"].dtype == np.uint16
    assert reply.dtypes["b"] == "bf16"
    assert reply.data["b"].tolist() == raw.tolist()


def test_non_contiguous_and_foreign_byte_order_are_converted(
    link: tuple[str, str], peer: Any
) -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    data = {
        "strided": base[:, ::2],
        "fortran": np.asfortranarray(base),
        "big_endian": base.astype(">f8"),
    }
    with shmex.Exchanger(*link) as ex:
        p = peer(link, echo)
        reply = ex.execute("train", data)
        p.join()
    for name, sent in data.items():
        np.testing.assert_array_equal(reply.data[name], sent)
    assert reply.data["big_endian"].dtype == np.float64


def test_opaque_bytes_both_ways(link: tuple[str, str], peer: Any) -> None:
    payload = bytes(range(256)) * 10
    with shmex.Exchanger(*link) as ex:
        p = peer(link, echo)
        reply = ex.execute("run", payload, {"what": "pickle"})
        (task,) = p.join()
    assert task.data_kind == "APP_DEFINED" and task.data == payload
    assert reply.data_kind == "APP_DEFINED" and reply.data == payload


def test_views_survive_next_message_close_and_the_task(link: tuple[str, str], peer: Any) -> None:
    first = np.arange(1000, dtype=np.float64)
    second = -first
    kept: list[np.ndarray] = []

    def trainer(agent: shmex.Agent) -> None:
        task = agent.get_task(timeout=20)
        assert task is not None
        kept.append(task.data["x"])
        agent.submit_result({"x": task.data["x"]})
        task2 = agent.get_task(timeout=20)
        assert task2 is not None
        kept.append(task2.data["x"])
        agent.submit_result({"x": task2.data["x"]})

    with shmex.Exchanger(*link) as ex:
        p = peer(link, trainer)
        r1 = ex.execute("train", {"x": first}).data
        r2 = ex.execute("train", {"x": second}).data
        p.join()
        assert isinstance(r1, dict) and isinstance(r2, dict)
        a1 = r1["x"]
    del r1
    gc.collect()
    # The agent and the exchanger are closed; tasks and replies are gone: the arrays remain.
    np.testing.assert_array_equal(a1, first)
    np.testing.assert_array_equal(r2["x"], second)
    np.testing.assert_array_equal(kept[0], first)
    np.testing.assert_array_equal(kept[1], second)
    # The base owns the message: the chain of bases ends in the object holding it.
    assert isinstance(a1.base, _tensors._TensorMemory)


def test_views_are_zero_copy_exports(link: tuple[str, str], peer: Any) -> None:
    with shmex.Exchanger(*link) as ex:
        p = peer(link, echo)
        reply = ex.execute("train", {"x": np.arange(64, dtype=np.float32)})
        p.join()
    assert isinstance(reply.data, dict)
    x = reply.data["x"]
    address = x.__array_interface__["data"][0]
    assert x.base.__array_interface__["data"][0] == address
    via_dlpack = np.from_dlpack(x)
    assert via_dlpack.__array_interface__["data"][0] == address
    torch = pytest.importorskip("torch")
    with pytest.warns(UserWarning):  # torch warns that the array is read-only
        t = torch.from_numpy(x)
    assert t.data_ptr() == address


def test_the_memory_lives_exactly_as_long_as_the_last_array(
    link: tuple[str, str], peer: Any
) -> None:
    import weakref

    with shmex.Exchanger(*link) as ex:
        p = peer(link, echo)
        reply = ex.execute("train", {"x": np.ones(8), "y": np.zeros(3)})
        p.join()
    assert isinstance(reply.data, dict)
    x, y = reply.data["x"], reply.data["y"]
    message = weakref.ref(x.base._message)
    del reply
    gc.collect()
    assert message() is not None
    del x
    gc.collect()
    assert message() is not None  # y still views it
    del y
    gc.collect()
    assert message() is None


names = st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s)
arrays = st.tuples(
    st.sampled_from(sorted(NUMPY_DTYPES)),
    st.lists(st.integers(0, 4), min_size=0, max_size=4),
    st.integers(0, 2**32 - 1),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


def test_property_arbitrary_arrays_and_meta_round_trip(link: tuple[str, str], peer: Any) -> None:
    received: list[tuple[dict[str, Any], dict[str, Any]]] = []
    stop = threading.Event()

    def trainer(agent: shmex.Agent) -> None:
        while not stop.is_set():
            try:
                task = agent.get_task(timeout=0.2)
            except shmex.AgentClosed:
                return
            if task is not None:
                received.append((task.data, task.meta))
                agent.submit_result(resend(task), task.meta)

    with shmex.Exchanger(*link) as ex:
        p = peer(link, trainer)

        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(
            st.dictionaries(names, arrays, min_size=1, max_size=5),
            st.dictionaries(
                st.text(max_size=8).filter(lambda k: k != "data_kind"), json_values, max_size=4
            ),
        )
        def round_trip(spec: dict[str, Any], meta: dict[str, Any]) -> None:
            rng = np.random.default_rng(0)
            data = {}
            for name, (dtype, shape, seed) in spec.items():
                rng = np.random.default_rng(seed)
                data[name] = random_array(dtype, tuple(shape), rng)
            reply = ex.execute("train", data, meta)
            assert reply.rc == "OK"
            task_data, task_meta = received[-1]
            for got in (task_data, reply.data):
                assert isinstance(got, dict)
                assert {n: bits(a) for n, a in got.items()} == {n: bits(a) for n, a in data.items()}
            for got_meta in (task_meta, reply.meta):
                assert {k: v for k, v in got_meta.items() if k not in ("data_kind",)} == {
                    k: v for k, v in meta.items() if k != "data_kind"
                }

        round_trip()
        stop.set()
    p.join()
