"""Tools run in a killable worker process, like rewards: a tool that hangs, loops in C or kills its
process costs one call (reported back to the model as an error, and counted), never the run.

Protocol, over the worker's pipe:
  worker -> ("ready",) once its tools are loaded, or ("failed", message)
  parent -> ("call", name, arguments): arguments is a string (the tag format) or a dict of keyword
            arguments (the chat-template format); the worker answers ("ok", text) or
            ("error", kind, message)
  parent -> ("stop",)
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import weakref

from grpokit.envs.tools import load_tools
from grpokit.workers import Worker, serve

TOOL_ERROR_KINDS = ("exception", "not_a_string", "timeout", "crashed", "unknown_tool", "malformed_call")
_MAX_MESSAGE_CHARS = 200


def _describe(e: BaseException) -> str:
    text = str(e)
    return (f"{type(e).__name__}: {text}" if text else type(e).__name__)[:_MAX_MESSAGE_CHARS]


def _tool_worker(conn, specs: list, cwd: str, sys_path: list[str]) -> None:
    def handle(tools, message):
        _, name, arguments = message
        try:
            value = tools[name](arguments) if isinstance(arguments, str) else tools[name](**arguments)
        except BaseException as e:  # SystemExit too: a tool must not end its worker quietly
            conn.send(("error", "exception", _describe(e)))
            return
        if isinstance(value, str):
            conn.send(("ok", value))
        else:
            conn.send(("error", "not_a_string", f"returned a {type(value).__name__}; a tool must return a string"))

    serve(conn, cwd, sys_path, lambda: load_tools(specs), handle)


class ToolRunner:
    """Calls tools in one worker process, each call limited to `timeout` seconds."""

    def __init__(self, specs: list, *, timeout: float, startup_timeout: float = 60.0):
        self.names = list(load_tools(specs))  # load here too: a bad spec fails in the caller, naming it
        self.timeout = timeout
        self.restarts = 0
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(["grpokit.envs.tool_runner"])
        self._args = (list(specs), os.getcwd(), list(sys.path))
        self._startup_timeout = startup_timeout
        self._slot: list[Worker | None] = [None]
        self._finalizer = weakref.finalize(self, _stop, self._slot)

    def _worker(self) -> Worker:
        if self._slot[0] is None:
            self._slot[0] = Worker(self._ctx, _tool_worker, self._args, self._startup_timeout, what="tool")
        return self._slot[0]

    def call(self, name: str, arguments: str | dict) -> tuple[str | None, str | None, str | None]:
        """(text, None, None) from the tool, or (None, error kind, message)."""
        if name not in self.names:
            return None, "unknown_tool", f"no tool named {name!r}; the tools are {', '.join(self.names)}"
        worker = self._worker()
        try:
            worker.send(("call", name, arguments))
        except OSError:  # the idle worker died since the last call
            self._discard()
            worker = self._worker()
            worker.send(("call", name, arguments))
        status, reply = worker.receive(self.timeout)
        if status == "ok":
            return (reply[1], None, None) if reply[0] == "ok" else (None, reply[1], reply[2])
        self._discard()  # kills and reaps it, so its exit code is known
        self.restarts += 1
        description = worker.exit_description()
        if status == "timeout":
            return None, "timeout", f"no result within {self.timeout:g} s; the tool was stopped"
        return None, "crashed", f"the tool's process died ({description})"

    def _discard(self) -> None:
        if self._slot[0] is not None:
            self._slot[0].kill()
            self._slot[0] = None

    def close(self) -> None:
        _stop(self._slot)


def _stop(slot: list) -> None:
    if slot[0] is not None:
        slot[0].stop()
        slot[0] = None
