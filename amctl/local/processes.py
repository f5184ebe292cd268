"""Starting, probing and stopping the detached processes of the local stack."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import psutil

# Handles of the children this process spawned: kept so they can be reaped (and are not
# garbage-collected while running, which Python reports as a ResourceWarning).
_children: dict[int, subprocess.Popen[bytes]] = {}


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_accepts(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (for tests and throwaway servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def service_port(host: str = "127.0.0.1", taken: Collection[int] = ()) -> int:
    """A free port for a server started a while later: below the kernel's ephemeral range (a port picked there
    can become the source port of any outgoing connection before the server binds it) and below the stack's
    own 30xxx ports; not one of `taken`."""
    top = min(_ephemeral_low(), 30000)
    for _ in range(200 if top > 20000 else 0):
        port = random.randrange(20000, top)
        if port not in taken and port_is_free(host, port):
            return port
    return free_port(host)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def spawn(command: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path | None = None) -> int:
    """Start `command` in its own session with output appended to `log_path`; returns its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(command),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    return proc.pid


def process_alive(pid: int, created_at: float | None = None) -> bool:
    """True if `pid` runs and, when `created_at` is given, is the same process (not a reused pid)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return created_at is None or abs(proc.create_time() - created_at) < 1.0
    except psutil.Error:
        return False


def create_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def reap(pid: int, wait_s: float = 0.0) -> None:
    """Collect the exit status of a child we spawned, so it does not linger as a zombie; `wait_s` for one that
    is exiting (a multi-threaded process shows as a zombie before its last thread is gone and it can be collected)."""
    proc = _children.get(pid)
    if proc is None:
        return
    if wait_s:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)
    else:
        proc.poll()
    if proc.returncode is not None:
        del _children[pid]


def rss_bytes(pid: int) -> int:
    """Resident memory of the process and its children."""
    return _tree_memory(pid, lambda proc: int(proc.memory_info().rss))


def pss_bytes(pid: int) -> int:
    """Proportional memory of the process and its children: each shared page split among the processes that
    map it, so PostgreSQL's shared buffers count once, not once per backend as in `rss_bytes`. Reads smaps
    (a few ms for a large JVM): for the soak's samples, not for every status."""
    return _tree_memory(pid, lambda proc: int(proc.memory_full_info().pss))


def _tree_memory(pid: int, of: Callable[[psutil.Process], int]) -> int:
    try:
        proc = psutil.Process(pid)
        total = of(proc)
        for child in proc.children(recursive=True):
            try:
                total += of(child)
            except psutil.Error:
                continue
        return total
    except psutil.Error:
        return 0


def stop(pid: int, stop_signal: int = signal.SIGTERM, grace_s: float = 10.0) -> bool:
    """Signal the process group of `pid`, wait up to `grace_s`, then SIGKILL; True if it had to kill."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return False
    members = _group_members(pgid)
    try:
        os.killpg(pgid, stop_signal)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        reap(pid)
        if not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in _alive(members)):
            reap(pid, wait_s=5)  # it may have exited since the reap above: collect it, or its Popen warns at exit
            return False
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    psutil.wait_procs(_alive(members), timeout=5)
    reap(pid)
    return True


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in procs:
        try:
            if proc.is_running():
                alive.append(proc)
        except psutil.Error:
            continue
    return alive


def tail(path: Path, lines: int = 20) -> list[str]:
    if not path.exists():
        return []
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64 * 1024))
        text = fh.read().decode(errors="replace")
    return text.splitlines()[-lines:]
