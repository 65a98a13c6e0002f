"""``python -m shmex.bench``: a model round trip from Python: shmex, pickle 5 and FLARE's own path.

For each size, the same model dict (100 float32 tensors; one for 8 B) goes to a peer process
and comes back (the peer echoes it): through shmex (``Exchanger.execute`` → ``Agent`` →
``submit_result``), and as pickle protocol 5 with out-of-band buffers over a Unix socket
(``recv_into`` preallocated buffers, ``sendall`` of each buffer: no extra copies). With
``--rust PATH`` (the binary of ``cargo build --release --example protocol_rtt``, also found
through ``$SHMEX_PROTOCOL_RTT``), the same round trip done from Rust is measured too
(``shmex-rust``). Each receiving peer reports its peak RSS.

``flare`` is FLARE 2.9's own path, FLARE's code unmodified: ``IPCExchanger.execute`` on a
cellnet ``Cell`` named as the site (a client root cell, as a site's own cell is, with an
internal TCP listener on 127.0.0.1 in clear, made the way FLARE 2.9 makes one for its
trainers) sends the task to FLARE's ``IPCAgent`` in the peer process, which connects to that
listener as ``<site>.-<agent_id>``, fetches the task and submits the same data as its result.
The bench plays FLARE's client engine only as far as ``IPCExchanger`` needs one (the cell,
``FLContext``s, events dropped); the task is a ``WEIGHTS`` DXO turned into a ``Shareable``,
and the round trip ends when ``execute`` returns the result ``Shareable``. FLARE moves the
arrays with its download service (the receiver pulls them in 2 MiB chunks), so each timeout
that covers a transfer must cover the whole model: with FLARE's defaults
(``send_task_timeout`` 5 s, ``submit_result_timeout`` 30 s) a 1 GiB task is resent while the
agent still downloads the first copy, and the resends fail ("FOBS download data is
incomplete"). As a user would have to, the bench sets ``send_task_timeout``,
``submit_result_timeout`` and both sides' connection timeouts to 300 s and
``agent_ack_timeout`` to 60 s; a dead agent can then hold the bench up to 300 s.
``IPCAgent.get_task`` polls every 0.2 s, which is most of FLARE's small-model round trip; its
small sizes run ``max(--repeat, 20)`` times, not 1000. Without nvflare (or with
``--no-flare``) FLARE is skipped with a note; a size FLARE fails is reported as failed, with
the largest size it moved.

Prints a table and ``RESULT <transport> <size> <metric> <value> <unit>`` lines, and
``RATIO pickle5-socket/shmex-python <size> <x>``, ``RATIO flare/shmex-python <size> <x>``,
``RATIO shmex-python/shmex-rust <size> <x>`` and
``RESULT shmex-python <size> receiver_peak_rss_ratio <x> x``: the peak RSS of a fresh
agent process that receives one task and answers it, over model + both rings (the rings are
mapped whole). The peers of the timed runs report theirs too (``receiver_peak_rss_MiB``):
it can hold two models, as the next task arrives while the peer still holds the one it
answered. A benchmark, not a test.

    python -m shmex.bench [--sizes 8B,16MiB,256MiB,1GiB] [--repeat 5] [--rust PATH] [--no-flare]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import pickle
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
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
    """The peak RSS a peer reported as it ended (0 if it did not); kills a peer that hangs."""
    try:
        out, _ = peer.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        peer.kill()
        out, _ = peer.communicate()
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


# ---- FLARE 2.9's own path: IPCExchanger → cellnet → IPCAgent --------------------------------

# Every FLARE timeout that has to cover a whole model's transfer, in seconds (see the module
# docstring for what FLARE's defaults do at 1 GiB): 15 times the 1 GiB round trip seen here
# on a loaded host. It is also how long IPCExchanger.execute can hang when the agent dies
# while it downloads a task (FLARE's send_request does not see the abort signal).
_FLARE_TIMEOUT = 300.0
# FLARE's heartbeat and bye acks are small, but wait behind a model transfer on a busy host.
_FLARE_ACK_TIMEOUT = 60.0
# The agent answers the bye from a cell thread after its handler returns; stopping the cell at
# once drops that answer and the exchanger then waits out agent_ack_timeout.
_FLARE_BYE_LINGER = 1.0
# CoreCell wants a root_url or a parent_url. A client root cell (one FQCN element, like a
# site's cell) dials only its root_url, the FL server's, and there is none here; it never
# dials its parent_url (CoreCell.start), so this address only passes that check.
_FLARE_UNUSED_PARENT_URL = "tcp://127.0.0.1:1"

_flare_runs = itertools.count()


def flare_missing() -> str | None:
    """Why FLARE's path cannot be measured here, or None when nvflare's IPC classes import."""
    try:
        from nvflare.app_common.executors.ipc_exchanger import IPCExchanger  # noqa: F401
        from nvflare.client.ipc.ipc_agent import IPCAgent  # noqa: F401
    except ImportError as e:
        return f"nvflare is not importable ({e})"
    return None


def _flare_peer(url: str, site: str, agent_id: str, workspace: str) -> None:
    """FLARE's IPCAgent as a trainer that echoes each task's data until bye, then its RSS."""
    from nvflare.client.ipc.defs import AgentClosed as FlareAgentClosed
    from nvflare.client.ipc.defs import TaskResult
    from nvflare.client.ipc.ipc_agent import IPCAgent

    agent = IPCAgent(
        flare_site_url=url,
        flare_site_name=site,
        agent_id=agent_id,
        workspace_dir=workspace,
        secure_mode=False,
        submit_result_timeout=_FLARE_TIMEOUT,
        flare_site_connection_timeout=_FLARE_TIMEOUT,
        # an agent whose bench died closes itself instead of waiting for tasks forever
        flare_site_heartbeat_timeout=_FLARE_TIMEOUT,
    )
    agent.start()
    try:
        while True:
            try:
                task = agent.get_task()
            except FlareAgentClosed:
                break
            if not agent.submit_result(TaskResult(meta={}, data=task.data)):
                print(f"flare peer: the result of {task.task_id} was not taken", file=sys.stderr)
            del task
        time.sleep(_FLARE_BYE_LINGER)
    finally:
        agent.stop()
    _report_peak_rss()


class _FlareEngine:
    """What IPCExchanger asks of FLARE's client engine: the cell, contexts, event delivery."""

    def __init__(self, cell: Any, site: str) -> None:
        from nvflare.apis.fl_context import FLContextManager

        self._cell = cell
        self._contexts = FLContextManager(engine=self, identity_name=site, job_id="bench")

    def get_cell(self) -> Any:
        """The site's cell, which IPCExchanger sends from."""
        return self._cell

    def new_context(self) -> Any:
        """A fresh FLContext naming this engine and the site."""
        return self._contexts.new_context()

    def fire_event(self, event_type: str, fl_ctx: Any) -> None:
        """Drops the event: no other component listens here (FLARE fires one per error log)."""


class _Watchdog:
    """Triggers FLARE's abort signal when the agent's process exits or a round trip hangs.

    IPCExchanger.execute waits for the agent and its result until the job ends or the signal
    is triggered; without this a dead agent would hang the bench.
    """

    def __init__(self, peer: subprocess.Popen[str], abort: Any, limit: float) -> None:
        self.reason = ""
        self._peer = peer
        self._abort = abort
        self._limit = limit
        self._deadline = math.inf
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def arm(self) -> None:
        """Starts the clock for one round trip."""
        self._deadline = time.monotonic() + self._limit

    def close(self) -> None:
        """Stops watching."""
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            code = self._peer.poll()
            if code is not None:
                self.reason = f"the IPCAgent process exited with {code}"
            elif time.monotonic() > self._deadline:
                self.reason = f"no result within {self._limit:.0f} s"
            else:
                continue
            self._abort.trigger(self.reason)
            return


def _wait_for_cell(cell: Any, fqcn: str, peer: subprocess.Popen[str]) -> None:
    """Waits until the cell ``fqcn`` (the agent's, in ``peer``) has connected to ``cell``."""
    deadline = time.monotonic() + _FLARE_TIMEOUT
    while not cell.is_cell_connected(fqcn):
        if peer.poll() is not None:
            raise RuntimeError(f"the IPCAgent process exited with {peer.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the IPCAgent's cell did not connect in {_FLARE_TIMEOUT:.0f} s")
        time.sleep(0.05)


def bench_flare(data: dict[str, np.ndarray], repeat: int) -> tuple[list[float], int]:
    """Round-trip seconds of ``repeat`` tasks (after one warm-up) through FLARE, peer RSS.

    Raises RuntimeError naming what failed when a round trip does not come back ``OK`` with
    all of the model.
    """
    from nvflare.apis.dxo import DXO, DataKind, from_shareable
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_constant import ConnectionSecurity, FLContextKey, ReturnCode
    from nvflare.apis.signal import Signal
    from nvflare.app_common.app_constant import AppConstants
    from nvflare.app_common.decomposers import numpy_decomposers
    from nvflare.app_common.executors.ipc_exchanger import IPCExchanger
    from nvflare.client.ipc.defs import agent_site_fqcn
    from nvflare.fuel.f3.cellnet.cell import Cell
    from nvflare.fuel.f3.drivers.driver_params import DriverParams
    from nvflare.fuel.utils.config_service import ConfigService

    # cell names stay taken in a process (CoreCell.ALL_CELLS), so each run has its own site
    site, agent_id = f"bench{os.getpid()}x{next(_flare_runs)}", "peer"
    nbytes = sum(a.nbytes for a in data.values())
    times = []
    rss = 0
    with tempfile.TemporaryDirectory(prefix="shmex-bench-flare.") as workspace:
        ConfigService.initialize(section_files={}, config_path=[workspace])
        numpy_decomposers.register()
        cell = Cell(
            fqcn=site,
            root_url="",
            secure=False,
            credentials={},
            parent_url=_FLARE_UNUSED_PARENT_URL,
        )
        cell.start()
        engine = _FlareEngine(cell, site)
        exchanger = None
        peer = None
        watchdog = None
        try:
            cell.make_internal_listener(
                scheme="tcp",
                resources={
                    DriverParams.HOST.value: "localhost",
                    DriverParams.LISTEN_HOST.value: "127.0.0.1",
                    DriverParams.CONNECTION_SECURITY.value: ConnectionSecurity.CLEAR,
                },
            )
            url = cell.get_internal_listener_url()
            if not url:
                raise RuntimeError("the site cell has no internal listener")
            command = [sys.executable, "-m", "shmex.bench", "--peer", "flare"]
            peer = subprocess.Popen(
                [*command, url, site, agent_id, workspace],
                stdout=subprocess.PIPE,
                text=True,
            )
            # IPCExchanger's first heartbeat goes out at START_RUN and the next one 5 s later;
            # a run started before the agent's cell is connected spends those 5 s waiting.
            _wait_for_cell(cell, agent_site_fqcn(site, agent_id), peer)
            exchanger = IPCExchanger(
                send_task_timeout=_FLARE_TIMEOUT,
                agent_connection_timeout=_FLARE_TIMEOUT,
                agent_ack_timeout=_FLARE_ACK_TIMEOUT,
                agent_id=agent_id,
            )
            exchanger.handle_event(EventType.START_RUN, engine.new_context())
            abort = Signal()
            watchdog = _Watchdog(peer, abort, 2 * _FLARE_TIMEOUT)  # task there, result back
            for i in range(repeat + 1):
                task = DXO(data_kind=DataKind.WEIGHTS, data=data).to_shareable()
                task.set_header(FLContextKey.TASK_ID, f"task{i}")
                task.set_header(AppConstants.CURRENT_ROUND, i)
                task.set_header(AppConstants.NUM_ROUNDS, repeat + 1)
                watchdog.arm()
                start = time.perf_counter()
                result = exchanger.execute("train", task, engine.new_context(), abort)
                elapsed = time.perf_counter() - start
                rc = result.get_return_code()
                if rc != ReturnCode.OK:
                    why = f" ({watchdog.reason})" if watchdog.reason else ""
                    raise RuntimeError(f"FLARE round trip {i} returned {rc}{why}")
                back = from_shareable(result).data
                got = sum(getattr(a, "nbytes", 0) for a in back.values())
                if got != nbytes:
                    raise RuntimeError(f"FLARE round trip {i} returned {got} of {nbytes} bytes")
                del task, result, back
                if i:
                    times.append(elapsed)
        finally:
            if watchdog is not None:
                watchdog.close()
            if exchanger is not None and exchanger.cell is not None:
                exchanger.handle_event(EventType.END_RUN, engine.new_context())  # says bye
            elif peer is not None:
                peer.kill()  # it was never part of a run, so no bye would reach it
            if peer is not None:
                rss = _peak_rss(peer)
            cell.stop()
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


def _report(
    rows: list[tuple[str, str, int, float, int]],
    transport: str,
    label: str,
    size: int,
    times: list[float],
    rss: int,
) -> float:
    """Prints a transport's RESULT lines for one size, adds its table row, returns the median."""
    median = statistics.median(times)
    rows.append((transport, label, size, median, rss))
    print(f"RESULT {transport} {label} rtt_median_us {median * 1e6:.1f} us")
    if size >= 1 << 20:
        print(f"RESULT {transport} {label} round_trip_GBps {2 * size / median / 1e9:.2f} GB/s")
    print(f"RESULT {transport} {label} receiver_peak_rss_MiB {rss / (1 << 20):.1f} MiB")
    return median


def main(argv: list[str] | None = None) -> None:
    """Runs the comparison and prints the table and the RESULT/RATIO lines.

    After a failed FLARE round trip it ends the process (``os._exit``) once all is printed.
    """
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="FLARE's path (transport 'flare') is measured when nvflare 2.9 is importable.",
    )
    parser.add_argument("--sizes", default="8B,16MiB,256MiB", help="model sizes, e.g. 8B,1GiB")
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="timed round trips per size after one warm-up (sizes under 1 MiB: at least 1000, "
        "at least 20 for FLARE, whose agent polls for tasks every 0.2 s)",
    )
    parser.add_argument("--ring", default="64MiB", help="bytes of each shmex ring")
    parser.add_argument(
        "--rust",
        default=os.environ.get("SHMEX_PROTOCOL_RTT"),
        help="the protocol_rtt example binary (cargo build --release --example protocol_rtt)",
    )
    parser.add_argument(
        "--no-flare",
        action="store_true",
        help="skip FLARE 2.9's own path (IPCExchanger -> cellnet -> IPCAgent, timeouts "
        f"{_FLARE_TIMEOUT:.0f} s)",
    )
    parser.add_argument("--peer", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer:
        if args.peer[0] == "shmex":
            count = int(args.peer[3]) if len(args.peer) > 3 else None
            _shmex_peer(args.peer[1], args.peer[2], count)
        elif args.peer[0] == "flare":
            _flare_peer(*args.peer[1:5])
        else:
            _pickle_peer(int(args.peer[1]))
        return
    ring = parse_size(args.ring)
    no_flare = "--no-flare given" if args.no_flare else flare_missing()
    flare_moved: list[str] = []
    flare_failed: list[str] = []
    rows: list[tuple[str, str, int, float, int]] = []
    for label in args.sizes.split(","):
        size = parse_size(label)
        data = model(size)
        repeat = args.repeat if size >= 1 << 20 else max(args.repeat, 1000)
        shmex_times, shmex_rss = bench_shmex(data, repeat, ring)
        shmex_median = _report(rows, "shmex-python", label, size, shmex_times, shmex_rss)
        pickle_times, pickle_rss = bench_pickle(data, repeat)
        pickle_median = _report(rows, "pickle5-socket", label, size, pickle_times, pickle_rss)
        once = shmex_receiver_rss(data, ring)
        print(
            f"RESULT shmex-python {label} one_task_receiver_peak_rss_MiB {once / (1 << 20):.1f} MiB"
        )
        print(
            f"RESULT shmex-python {label} receiver_peak_rss_ratio {once / (size + 2 * ring):.2f} x"
        )
        print(f"RATIO pickle5-socket/shmex-python {label} {pickle_median / shmex_median:.2f}")
        if no_flare is None:
            flare_repeat = args.repeat if size >= 1 << 20 else max(args.repeat, 20)
            try:
                flare_times, flare_rss = bench_flare(data, flare_repeat)
            except RuntimeError as e:
                flare_failed.append(label)
                print(f"flare {label}: FAILED: {e}", flush=True)
            else:
                flare_moved.append(label)
                flare_median = _report(rows, "flare", label, size, flare_times, flare_rss)
                print(f"RATIO flare/shmex-python {label} {flare_median / shmex_median:.2f}")
        if args.rust:
            rust = bench_rust(args.rust, label, repeat, args.ring)
            if rust is not None:
                rows.append(("shmex-rust", label, size, rust, 0))
                print(f"RESULT shmex-rust {label} rtt_median_us {rust * 1e6:.1f} us")
                print(f"RATIO shmex-python/shmex-rust {label} {shmex_median / rust:.2f}")
        del data
    if not args.rust:
        print("shmex-rust: not measured (pass --rust PATH of the protocol_rtt example)")
    if no_flare is not None:
        print(f"flare: not measured: {no_flare}")
    elif flare_failed:
        largest = max(flare_moved, key=parse_size) if flare_moved else "none"
        print(f"flare: failed at {', '.join(flare_failed)}; largest size moved: {largest}")
    sender = _peak_rss_of_self() / (1 << 20)
    print(f"sender (this process, all transports) peak RSS: {sender:.1f} MiB")
    print(f"\n{'transport':<16}{'size':>8}{'median rtt':>14}{'receiver peak RSS':>20}")
    for transport, label, _size, median, rss in rows:
        peak = f"{rss / (1 << 20):.0f} MiB" if rss else "-"
        print(f"{transport:<16}{label:>8}{median * 1e3:>12.3f}ms{peak:>20}")
    if flare_failed:
        # FLARE's download for a failed round trip can wait out its per-request timeout
        # (np_streaming_per_request_timeout, 600 s) in a pool thread the interpreter joins at
        # exit. Our peers are reaped and our files removed, so do not wait for it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
