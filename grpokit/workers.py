"""Killable worker processes: user code (rewards, tools) runs where a hang or a crash costs one
call, never the run. A Python thread cannot be stopped and `signal.alarm` cannot interrupt code
stuck in C; a process can always be killed (with its whole process group).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from multiprocessing.connection import wait

from grpokit.errors import GrpokitError


@contextlib.contextmanager
def _parent_main_hidden():
    """Start a process without it re-importing the parent's main module.

    Under spawn and forkserver, multiprocessing has each child import the parent's `__main__`
    by name or path (`multiprocessing.spawn.get_preparation_data`), so top-level code of a trainer
    script would run again and its imports (torch, transformers: ~200 MB resident) would sit in
    the reward worker. The worker needs only this module, which its target names, so the main
    module's `__spec__` and `__file__` are hidden while the process starts.
    """
    main = sys.modules.get("__main__")
    saved = {key: getattr(main, key) for key in ("__spec__", "__file__") if hasattr(main, key)}
    try:
        if main is not None:
            main.__spec__ = None
            if "__file__" in saved:
                del main.__file__
        yield
    finally:
        for key, value in saved.items():
            setattr(main, key, value)


def serve(conn, cwd: str, sys_path: list[str], setup, handle) -> None:
    """The body of a worker process: a process group of its own (killing the group also stops anything
    the user code started; Ctrl-C reaches only the trainer, which decides what happens to its workers),
    the parent's directory and import path (so dotted paths and relative files resolve as they did
    there), then `state = setup()` (its error is sent as ("failed", message)), ("ready",), and
    `handle(state, message)` for each message until ("stop",) or EOF."""
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # in case the whole session gets it
    os.chdir(cwd)
    sys.path[:] = sys_path
    try:
        state = setup()
    except BaseException as e:  # reported to the parent, which raises it where the config is
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent is gone
            return
        if message[0] == "stop":
            return
        handle(state, message)


class Worker:
    """One worker process and the parent's end of its pipe.

    `target(conn, *args)` runs in the worker: it sends ("ready",) once set up (or ("failed", message)),
    then answers messages until ("stop",) or EOF. `what` names the worker in errors ("reward", "tool").
    """

    def __init__(self, ctx, target, args: tuple, startup_timeout: float, what: str) -> None:
        self.what = what
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(child_conn, *args), name=f"grpokit-{what}-worker",
                                   daemon=True)  # daemon: never outlives the trainer, even without close()
        with _parent_main_hidden():
            self.process.start()
        child_conn.close()  # the worker now holds the only write end, so its death reads as EOF here
        status, reply = self.receive(startup_timeout)
        if status == "ok" and reply[0] == "ready":
            return
        self.kill()
        if status == "ok":
            raise GrpokitError(f"the {self.what} worker process could not load its {self.what}s: {reply[1]}")
        if status == "timeout":
            raise GrpokitError(f"the {self.what} worker process did not start within {startup_timeout:g} s.")
        raise GrpokitError(
            f"the {self.what} worker process died while starting ({self.exit_description()}); its error, if any, "
            "is printed above."
        )

    def send(self, message: tuple) -> None:
        self.conn.send(message)

    def receive(self, timeout: float | None) -> tuple[str, object]:
        """("ok", message), ("timeout", None) or ("crashed", None); waits at most `timeout` seconds."""
        ready = wait([self.conn, self.process.sentinel], timeout)
        if not ready:
            return "timeout", None
        # A worker may send its last result and then die: read what is in the pipe first.
        if self.conn in ready or self.conn.poll():
            try:
                return "ok", self.conn.recv()
            except Exception:  # EOF, or a message cut short by the worker's death
                return "crashed", None
        return "crashed", None

    def exit_description(self) -> str:
        code = self.process.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            hint = " (killed: out of memory?)" if -code == signal.SIGKILL else ""
            return f"killed by signal {name}{hint}"
        return f"exit code {code}"

    def kill(self) -> None:
        """SIGKILL (a call stuck in C ignores anything gentler) and reap, so no zombie is left."""
        try:  # the worker's group: the worker and whatever its rewards started
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # all gone, or died before making its group
            pass
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()

    def stop(self, grace_s: float = 1.0) -> None:
        try:
            self.conn.send(("stop",))
            self.process.join(grace_s)
        except OSError:  # already dead
            pass
        self.kill()
