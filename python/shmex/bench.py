"""``python -m shmex.bench``: a model round trip from Python, shmex against pickle 5 over a socket.

For each size, the same model dict (100 float32 tensors; one for 8 B) goes to a peer process
and comes back (the peer echoes it): through shmex (``Exchanger.execute`` → ``Agent`` →
``submit_result``), and as pickle protocol 5 with out-of-band buffers over a Unix socket
(``recv_into`` preallocated buffers, ``sendall`` of each buffer: no extra copies). Prints a
table and ``RESULT <transport> <size> <metric> <value> <unit>`` and
``RATIO pickle5-socket/shmex-python <size> <x>`` lines. A benchmark, not a test.

    python -m shmex.bench [--sizes 8B,16MiB,256MiB,1GiB] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import pickle
import socket
import statistics
import struct
import subprocess
import sys
import time
from typing import Any

import numpy as np

from ._protocol import Agent, AgentClosed, Exchanger

_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def parse_size(text: str) -> int:
    """Bytes of ``8B``, ``16MiB``, ``1GiB``..."""
    for unit in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            return int(text[: -len(unit)]) * _UNITS[unit]
    return int(text)


def model(size: int) -> dict[str, np.ndarray]:
    """A model dict of ``size`` bytes: 100 float32 tensors (one when it is tiny)."""
    count = 100 if size >= 100 * 4 * 1024 else 1
    per = max(size // count // 4, 1)
    return {f"layer{i:03d}": np.full(per, i, dtype=np.float32) for i in range(count)}


# ---- shmex ---------------------------------------------------------------------------------


def _shmex_peer(site: str, agent_id: str) -> None:
    with Agent(site, agent_id, attach_timeout=60) as agent:
        while True:
            try:
                task = agent.get_task()
            except AgentClosed:  # the exchanger said bye: the run is over
                return
            if task is None:
                continue
            agent.submit_result(task.data, {})


def bench_shmex(data: dict[str, np.ndarray], repeat: int, ring: int) -> list[float]:
    """Round-trip seconds of ``repeat`` tasks (after one warm-up) through shmex."""
    site, agent_id = f"bench{os.getpid()}", "peer"
    times = []
    with Exchanger(site, agent_id, task_ring_capacity=ring, result_ring_capacity=ring) as ex:
        peer = subprocess.Popen(
            [sys.executable, "-m", "shmex.bench", "--peer", "shmex", site, agent_id]
        )
        try:
            for i in range(repeat + 1):
                start = time.perf_counter()
                reply = ex.execute("echo", data)
                elapsed = time.perf_counter() - start
                if reply.rc != "OK":
                    raise RuntimeError(f"shmex round trip failed: {reply.rc}")
                del reply
                if i:
                    times.append(elapsed)
        finally:
            ex.close()
            peer.wait(timeout=30)
    return times


# ---- pickle 5 over a Unix socket -----------------------------------------------------------


def _send(sock: socket.socket, obj: Any) -> None:
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    views = [b.raw() for b in buffers]
    sizes = [len(head)] + [v.nbytes for v in views]
    sock.sendall(struct.pack(f"<Q{len(sizes)}Q", len(sizes), *sizes))
    sock.sendall(head)
    for view in views:
        sock.sendall(view)


def _recv_exact(sock: socket.socket, nbytes: int) -> bytearray:
    buf = bytearray(nbytes)
    view = memoryview(buf)
    got = 0
    while got < nbytes:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError("peer closed")
        got += n
    return buf


def _recv(sock: socket.socket) -> Any:
    (count,) = struct.unpack("<Q", _recv_exact(sock, 8))
    sizes = struct.unpack(f"<{count}Q", _recv_exact(sock, 8 * count))
    head = _recv_exact(sock, sizes[0])
    buffers = [_recv_exact(sock, n) for n in sizes[1:]]
    return pickle.loads(head, buffers=buffers)


def _pickle_peer(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    try:
        while True:
            _send(sock, _recv(sock))
    except EOFError:
        pass


def bench_pickle(data: dict[str, np.ndarray], repeat: int) -> list[float]:
    """Round-trip seconds of ``repeat`` messages (after one warm-up) as pickle 5 on a socket."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    peer = subprocess.Popen(
        [sys.executable, "-m", "shmex.bench", "--peer", "pickle", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    times = []
    try:
        for i in range(repeat + 1):
            start = time.perf_counter()
            _send(mine, data)
            back = _recv(mine)
            elapsed = time.perf_counter() - start
            del back
            if i:
                times.append(elapsed)
    finally:
        mine.close()
        peer.wait(timeout=30)
    return times


# ---- the report ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Runs the comparison and prints the table and the RESULT/RATIO lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8B,16MiB,256MiB")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ring", default="64MiB", help="bytes of each shmex ring")
    parser.add_argument("--peer", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer:
        if args.peer[0] == "shmex":
            _shmex_peer(args.peer[1], args.peer[2])
        else:
            _pickle_peer(int(args.peer[1]))
        return
    rows = []
    for label in args.sizes.split(","):
        size = parse_size(label)
        data = model(size)
        repeat = args.repeat if size >= 1 << 20 else max(args.repeat, 1000)
        for transport, times in (
            ("shmex-python", bench_shmex(data, repeat, parse_size(args.ring))),
            ("pickle5-socket", bench_pickle(data, repeat)),
        ):
            median = statistics.median(times)
            rows.append((transport, label, size, median))
            print(f"RESULT {transport} {label} rtt_median_us {median * 1e6:.1f} us")
            if size >= 1 << 20:
                print(
                    f"RESULT {transport} {label} round_trip_GBps {2 * size / median / 1e9:.2f} GB/s"
                )
        shmex_t = rows[-2][3]
        pickle_t = rows[-1][3]
        print(f"RATIO pickle5-socket/shmex-python {label} {pickle_t / shmex_t:.2f}")
    print(f"\n{'transport':<16}{'size':>8}{'median rtt':>14}")
    for transport, label, _size, median in rows:
        print(f"{transport:<16}{label:>8}{median * 1e3:>12.3f}ms")


if __name__ == "__main__":
    main()
