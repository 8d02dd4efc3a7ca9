"""A pool of confined executors: run model-written programs, up to `workers` at a time.

Each run gets a fresh bubblewrap sandbox (command line in `bwrap.py`): its own PID, network,
mount, IPC and UTS namespaces, read-only system folders, a size-limited tmpfs as working
directory, an empty environment and kernel resource limits. When the run ends, or is killed at
its wall-clock limit, the sandbox's PID 1 dies and the kernel kills every process left in its
namespace, including ones that called `setsid`: nothing outlives a run.

    >>> pool = Sandbox(workers=2)                                    # doctest: +SKIP
    >>> pool.run_python("print(input()[::-1])", stdin="abc").stdout  # doctest: +SKIP
    'cba\\n'
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

from grpokit.sandbox import bwrap
from grpokit.sandbox.limits import Limits, RunResult, SandboxUnavailable

_UNCONFINED_WARNING = (
    "grpokit sandbox: running model-written code UNCONFINED (unconfined_ok=True) because {why} Only resource "
    "limits apply: the program can reach the network, read and write your files, and leave processes behind "
    "that called setsid."
)


def _read_capped(path: str, limit: int) -> tuple[str, bool]:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    return data[:limit].decode("utf-8", errors="replace"), len(data) > limit


class Sandbox:
    """Confined executors, `workers` at a time; safe to call from many threads.

    Args:
        workers: programs run at once (each run is one bubblewrap process tree; calls beyond this wait).
        limits: default `Limits` per program; `run` may override them per call.
        python: the interpreter `run_python` uses inside (default: this one, with its site-packages).
        unconfined_ok: where bubblewrap or namespaces are unavailable, run with resource limits only
            (and warn) instead of raising `SandboxUnavailable`.
        bwrap: the bubblewrap executable.
        uid_base: when running as root, slot k runs as uid and gid `uid_base + k` (RLIMIT_NPROC is not
            applied to root, and a uid per slot keeps sandboxes from sharing one count).
    """

    def __init__(self, workers: int = 4, limits: Limits | None = None, *, python: str | None = None,
                 unconfined_ok: bool = False, bwrap_path: str = "bwrap", uid_base: int = bwrap.DEFAULT_UID_BASE):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"sandbox workers={workers!r} must be a positive integer.")
        self.limits = limits or Limits()
        self.limits.check()
        self.workers = workers
        self.python = python or sys.executable
        self.unconfined_ok = unconfined_ok
        self._bwrap_name = bwrap_path
        self._uid_base = uid_base
        self._slots: queue.Queue[int] = queue.Queue()
        for k in range(workers):
            self._slots.put(k)
        self._executor: ThreadPoolExecutor | None = None
        self._stats_lock = threading.Lock()
        self._runs = 0
        self._busy_s = 0.0
        self._first_start: float | None = None
        self._last_end: float | None = None
        self._backend: str | None = None  # bwrap path, or "" for unconfined; decided on first use

    # -- confinement --------------------------------------------------------------------------
    def check(self) -> str:
        """Make sure programs can be confined here; return 'bubblewrap' or 'unconfined'.

        Raises SandboxUnavailable (with what is missing and how to fix it) unless `unconfined_ok`."""
        if self._backend is None:
            try:
                self._backend = bwrap.probe(self._bwrap_name, self.python)
            except SandboxUnavailable as e:
                if not self.unconfined_ok:
                    raise
                warnings.warn(_UNCONFINED_WARNING.format(why=e), RuntimeWarning, stacklevel=2)
                self._backend = ""
        return "bubblewrap" if self._backend else "unconfined"

    @contextlib.contextmanager
    def _slot(self):
        slot = self._slots.get()
        try:
            yield slot
        finally:
            self._slots.put(slot)

    # -- running ------------------------------------------------------------------------------
    def run(self, argv: list[str], *, stdin: str | bytes = b"", files: dict[str, str | bytes] | None = None,
            limits: Limits | None = None, result_channel: bool = False) -> RunResult:
        """Run `argv` in a fresh sandbox whose working directory holds `files`; wait for it to end.

        `argv[0]` should be an absolute path that exists inside (system folders and the Python
        installation are visible read-only); file names in `argv` are relative to the working directory.
        With `result_channel`, the program inherits a writable fd whose number it finds in
        `GRPOKIT_RESULT_FD`-free form: it is appended to argv as the last argument, and what it writes
        comes back in `result.extra["channel"]` (the code_tests harness reports through it).
        """
        limits = limits or self.limits
        limits.check()
        self.check()
        for name in files or {}:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"sandbox file name {name!r} must be a plain name such as 'main.py'.")
        with self._slot() as slot:
            start = time.monotonic()
            try:
                result = self._run(list(argv), stdin, dict(files or {}), limits, slot, result_channel)
            finally:
                end = time.monotonic()
                with self._stats_lock:
                    self._runs += 1
                    self._busy_s += end - start
                    self._first_start = start if self._first_start is None else min(self._first_start, start)
                    self._last_end = end if self._last_end is None else max(self._last_end, end)
        return result

    def run_python(self, code: str, *, stdin: str | bytes = b"", timeout: float | None = None,
                   files: dict[str, str | bytes] | None = None, limits: Limits | None = None) -> RunResult:
        """Run Python source as `main.py` (its `__name__` is "__main__") with `stdin`; `timeout` overrides
        the wall-clock limit."""
        limits = limits or self.limits
        if timeout is not None:
            limits = limits.with_(wall_s=timeout)
        return self.run([self.python, "-E", "-s", "main.py"], stdin=stdin,
                        files={**(files or {}), "main.py": code}, limits=limits)

    def map(self, fn, items: list) -> list:
        """`[fn(self, item) for item in items]`, `workers` at a time, results in order."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="grpokit-sandbox")
        return list(self._executor.map(lambda item: fn(self, item), items))

    def stats(self) -> dict:
        """Programs run, seconds spent in them (summed over workers), and programs per second of wall time
        from the first start to the last end (the pool's throughput)."""
        with self._stats_lock:
            window = (self._last_end - self._first_start) if self._runs else 0.0
            return {"programs": self._runs, "busy_s": round(self._busy_s, 3), "wall_s": round(window, 3),
                    "programs_per_s": round(self._runs / window, 2) if window > 0 else None,
                    "workers": self.workers, "backend": self.check() if self._backend is not None else None}

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one run ------------------------------------------------------------------------------
    def _run(self, argv: list[str], stdin: str | bytes, files: dict, limits: Limits, slot: int,
             result_channel: bool) -> RunResult:
        confined = bool(self._backend)
        tmp = tempfile.mkdtemp(prefix="grpokit-sandbox-")  # ours, outside the sandbox: the program never sees it
        opened: list = []

        def open_(name: str, mode: str, data: str | bytes | None = None):
            path = os.path.join(tmp, name)
            if data is not None:
                with open(path, "wb") as f:
                    f.write(data.encode() if isinstance(data, str) else data)
            handle = open(path, mode)
            opened.append(handle)
            return handle

        try:
            stdin_f = open_("stdin", "rb", stdin)
            out_f, err_f, info_f = open_("stdout", "wb"), open_("stderr", "wb"), open_("info", "w+b")
            channel_f = open_("channel", "wb") if result_channel else None
            if channel_f is not None:
                argv = [*argv, str(channel_f.fileno())]
            if confined:
                fds = {name: open_(f"file-{i}", "rb", data).fileno() for i, (name, data) in enumerate(files.items())}
                uid = self._uid_base + slot if os.geteuid() == 0 else None
                command = bwrap.bwrap_command(self._backend, limits, argv, fds, info_f.fileno(), self.python, uid)
                pass_fds = (*fds.values(), info_f.fileno())
                cwd = None
            else:
                cwd = os.path.join(tmp, "work")
                os.mkdir(cwd)
                for name, data in files.items():
                    with open(os.path.join(cwd, name), "wb") as f:
                        f.write(data.encode() if isinstance(data, str) else data)
                command, pass_fds = bwrap.unconfined_command(limits, argv), ()
            if channel_f is not None:
                pass_fds = (*pass_fds, channel_f.fileno())
            start = time.monotonic()
            try:
                proc = subprocess.Popen(command, stdin=stdin_f, stdout=out_f, stderr=err_f, pass_fds=pass_fds,
                                        cwd=cwd, env={}, start_new_session=True, close_fds=True)
            except OSError as e:  # the sandbox itself failed: not the program's fault
                raise SandboxUnavailable(f"could not start the sandbox: {e}") from e
            timed_out = False
            try:
                if not _wait(proc, limits.wall_s):
                    timed_out = True
                    self._kill(proc, info_f.name, confined)
            except BaseException:  # interrupted (Ctrl-C): leave nothing running
                self._kill(proc, info_f.name, confined)
                raise
            wall_s = time.monotonic() - start
            code = proc.returncode
            if code is not None and code < 0:  # unconfined: killed by a signal; report it as bwrap does
                code = 128 - code
            stdout, out_cut = _read_capped(out_f.name, limits.output_bytes)
            stderr, err_cut = _read_capped(err_f.name, limits.output_bytes)
            if confined and not timed_out and _sandbox_info(info_f.name) is None:
                # bwrap writes its info only once the namespaces exist, before the program could run, so a
                # missing info is bwrap's own failure (which the program cannot fake), never a program result.
                raise SandboxUnavailable(f"the sandbox failed to start (exit {code}): {stderr.strip()[:300]}")
            extra = {}
            if channel_f is not None:
                extra["channel"] = _read_capped(channel_f.name, 1 << 20)[0]
            return RunResult(stdout, stderr, None if timed_out else code, timed_out, wall_s, out_cut, err_cut,
                             confined, extra)
        finally:
            for handle in opened:
                handle.close()
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _kill(proc: subprocess.Popen, info_path: str, confined: bool) -> None:
        """Kill the sandbox and return only once every process in it is gone.

        The sandbox's PID 1 is killed first: the kernel then kills the rest of its PID namespace and
        bwrap (its parent) reaps it only after that, so bwrap's exit means the namespace is empty.
        """
        if confined:
            pid = _sandbox_init_pid(info_path, proc.pid)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # bwrap itself (and, unconfined, the program's group)
        proc.wait()


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait for the process to exit, at most `timeout` s; False on timeout. A pidfd wakes us the moment it
    exits (Popen.wait(timeout) polls with sleeps of up to 50 ms, a third of a trivial program's run)."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # before Linux 5.3
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            return False
    finally:
        os.close(pidfd)
    proc.wait()
    return True


def _sandbox_init_pid(info_path: str, bwrap_pid: int) -> int | None:
    """The host pid of the sandbox's PID 1, from bwrap's --info-fd, checked to be bwrap's own child
    (the program could have written into the file; a pid that is not bwrap's child is never signalled)."""
    info = _sandbox_info(info_path)
    try:
        pid = int(info.get("child-pid", 0))
        with open(f"/proc/{pid}/stat") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return pid if pid > 0 and parent == bwrap_pid else None


def _sandbox_info(info_path: str) -> dict | None:
    try:
        with open(info_path) as f:
            info = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "child-pid" in info else None
