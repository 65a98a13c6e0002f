"""``python -m shmex.bench``: a model round trip from Python, shmex against pickle 5 over a socket.

For each size, the same model dict (100 float32 tensors; one for 8 B) goes to a peer process
and comes back (the peer echoes it): through shmex (``Exchanger.execute`` → ``Agent`` →
``submit_result``), and as pickle protocol 5 with out-of-band buffers over a Unix socket
(``recv_into`` preallocated buffers, ``sendall`` of each buffer: no extra copies). With
``--rust PATH`` (the binary of ``cargo build --release --example protocol_rtt``, also found
through ``$SHMEX_PROTOCOL_RTT``), the same round trip done from Rust is measured too
(``shmex-rust``). Each receiving peer reports its peak RSS.

Prints a table and ``RESULT <transport> <size> <metric> <value> <unit>`` lines, and
``RATIO pickle5-socket/shmex-python <size> <x>``, ``RATIO shmex-python/shmex-rust <size> <x>``
and ``RESULT shmex-python <size> receiver_peak_rss_ratio <x> x``: the peak RSS of a fresh
agent process that receives one task and answers it, over model + both rings (the rings are
mapped whole). The peers of the timed runs report theirs too (``receiver_peak_rss_MiB``):
it can hold two models, as the next task arrives while the peer still holds the one it
answered. FLARE 2.9's own path (``RATIO flare/shmex-python``) is not measured here yet.
A benchmark, not a test.

    python -m shmex.bench [--sizes 8B,16MiB,256MiB,1GiB] [--repeat 5] [--rust PATH]
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
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


def _peak_rss_of_self() -> int:
    """Peak RSS of this process in bytes: ``VmHWM`` of ``/proc/self/status``.

    Not ``ru_maxrss``: Linux keeps that across ``execve``, so a peer started by a parent that
    holds a model would report the parent's RSS at the fork.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _report_peak_rss() -> None:
    """Prints this process's peak RSS in bytes, for the parent to read."""
    print(f"PEAK_RSS {_peak_rss_of_self()}", flush=True)


def _peak_rss(peer: subprocess.Popen[str]) -> int:
    """The peak RSS a peer reported as it ended (0 if it did not)."""
    out, _ = peer.communicate(timeout=60)
    for line in out.splitlines():
        if line.startswith("PEAK_RSS "):
            return int(line.split()[1])
    return 0


def _shmex_peer(site: str, agent_id: str, count: int | None = None) -> None:
    """Echoes tasks until bye (or ``count`` of them), then reports its peak RSS."""
    with Agent(site, agent_id, attach_timeout=60) as agent:
        while count is None or count > 0:
            try:
                task = agent.get_task()
            except AgentClosed:  # the exchanger said bye: the run is over
                break
            if task is None:
                continue
            agent.submit_result(task.data, {})
            del task
            count = None if count is None else count - 1
    _report_peak_rss()


def bench_shmex(data: dict[str, np.ndarray], repeat: int, ring: int) -> tuple[list[float], int]:
    """Round-trip seconds of ``repeat`` tasks (after one warm-up) through shmex, peer RSS."""
    site, agent_id = f"bench{os.getpid()}", "peer"
    times = []
    with Exchanger(site, agent_id, task_ring_capacity=ring, result_ring_capacity=ring) as ex:
        peer = subprocess.Popen(
            [sys.executable, "-m", "shmex.bench", "--peer", "shmex", site, agent_id],
            stdout=subprocess.PIPE,
            text=True,
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
            rss = _peak_rss(peer)
    return times, rss


def shmex_receiver_rss(data: dict[str, np.ndarray], ring: int) -> int:
    """Peak RSS of a fresh agent process that receives one task of ``data`` and echoes it.

    One task only: in the timed run the next task can arrive while the peer still holds the
    last one (it answers from its view), so that peer's peak can hold two models.
    """
    site, agent_id = f"benchrss{os.getpid()}", "peer"
    with Exchanger(site, agent_id, task_ring_capacity=ring, result_ring_capacity=ring) as ex:
        peer = subprocess.Popen(
            [sys.executable, "-m", "shmex.bench", "--peer", "shmex", site, agent_id, "1"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            reply = ex.execute("echo", data)
            if reply.rc != "OK":
                raise RuntimeError(f"shmex round trip failed: {reply.rc}")
            del reply
        finally:
            rss = _peak_rss(peer)
    return rss


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
    _report_peak_rss()


def bench_pickle(data: dict[str, np.ndarray], repeat: int) -> tuple[list[float], int]:
    """Round-trip seconds of ``repeat`` messages (after one warm-up) as pickle 5 on a socket."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    peer = subprocess.Popen(
        [sys.executable, "-m", "shmex.bench", "--peer", "pickle", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
        stdout=subprocess.PIPE,
        text=True,
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
        rss = _peak_rss(peer)
    return times, rss


# ---- the same round trip from Rust ---------------------------------------------------------


def bench_rust(binary: str, label: str, repeat: int, ring: str) -> float | None:
    """Median round-trip seconds of ``protocol_rtt`` (the Rust example) for ``label``."""
    out = subprocess.run(
        [binary, "--sizes", label, "--repeat", str(repeat), "--ring", ring],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    for line in out.splitlines():
        parts = line.split()
        if parts[:3] == ["RESULT", "shmex-rust", label] and parts[3] == "rtt_median_us":
            return float(parts[4]) / 1e6
    return None


# ---- the report ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Runs the comparison and prints the table and the RESULT/RATIO lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8B,16MiB,256MiB")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ring", default="64MiB", help="bytes of each shmex ring")
    parser.add_argument(
        "--rust",
        default=os.environ.get("SHMEX_PROTOCOL_RTT"),
        help="the protocol_rtt example binary (cargo build --release --example protocol_rtt)",
    )
    parser.add_argument("--peer", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer:
        if args.peer[0] == "shmex":
            count = int(args.peer[3]) if len(args.peer) > 3 else None
            _shmex_peer(args.peer[1], args.peer[2], count)
        else:
            _pickle_peer(int(args.peer[1]))
        return
    ring = parse_size(args.ring)
    rows = []
    for label in args.sizes.split(","):
        size = parse_size(label)
        data = model(size)
        repeat = args.repeat if size >= 1 << 20 else max(args.repeat, 1000)
        medians: dict[str, float] = {}
        for transport, (times, rss) in (
            ("shmex-python", bench_shmex(data, repeat, ring)),
            ("pickle5-socket", bench_pickle(data, repeat)),
        ):
            median = statistics.median(times)
            medians[transport] = median
            rows.append((transport, label, size, median, rss))
            print(f"RESULT {transport} {label} rtt_median_us {median * 1e6:.1f} us")
            if size >= 1 << 20:
                print(
                    f"RESULT {transport} {label} round_trip_GBps {2 * size / median / 1e9:.2f} GB/s"
                )
            print(f"RESULT {transport} {label} receiver_peak_rss_MiB {rss / (1 << 20):.1f} MiB")
        once = shmex_receiver_rss(data, ring)
        print(
            f"RESULT shmex-python {label} one_task_receiver_peak_rss_MiB {once / (1 << 20):.1f} MiB"
        )
        print(
            f"RESULT shmex-python {label} receiver_peak_rss_ratio {once / (size + 2 * ring):.2f} x"
        )
        print(
            f"RATIO pickle5-socket/shmex-python {label} "
            f"{medians['pickle5-socket'] / medians['shmex-python']:.2f}"
        )
        if args.rust:
            rust = bench_rust(args.rust, label, repeat, args.ring)
            if rust is not None:
                rows.append(("shmex-rust", label, size, rust, 0))
                print(f"RESULT shmex-rust {label} rtt_median_us {rust * 1e6:.1f} us")
                print(f"RATIO shmex-python/shmex-rust {label} {medians['shmex-python'] / rust:.2f}")
    if not args.rust:
        print("shmex-rust: not measured (pass --rust PATH of the protocol_rtt example)")
    print("flare: not measured (FLARE 2.9's IPCAgent path is not wired into this benchmark)")
    sender = _peak_rss_of_self() / (1 << 20)
    print(f"sender (this process, all transports) peak RSS: {sender:.1f} MiB")
    print(f"\n{'transport':<16}{'size':>8}{'median rtt':>14}{'receiver peak RSS':>20}")
    for transport, label, _size, median, rss in rows:
        peak = f"{rss / (1 << 20):.0f} MiB" if rss else "-"
        print(f"{transport:<16}{label:>8}{median * 1e3:>12.3f}ms{peak:>20}")


if __name__ == "__main__":
    main()
