"""What a sandboxed program may use (`Limits`) and what it left behind (`RunResult`)."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field, replace


class SandboxUnavailable(RuntimeError):
    """The sandbox could not confine a program on this machine (no bubblewrap, no namespaces...).

    Raised, never turned into a score: a program that could not be checked is unknown, not wrong.
    """


@dataclass(frozen=True)
class Limits:
    """Per-program limits. Each maps to one kernel mechanism (see docs/sandbox.md).

    >>> Limits(wall_s=2.0).with_(memory_mb=256).memory_mb
    256
    """

    wall_s: float = 10.0
    """Wall-clock seconds before the whole sandbox (every process in it) is killed."""
    cpu_s: int = 10
    """CPU seconds per process (RLIMIT_CPU: SIGXCPU at the limit, SIGKILL one second later)."""
    memory_mb: int = 1024
    """Address space per process in MiB (RLIMIT_AS): a big allocation fails with MemoryError."""
    processes: int = 32
    """Processes and threads (RLIMIT_NPROC, counted per sandbox): a fork bomb stops here."""
    file_size_mb: int = 16
    """Largest file a process may write (RLIMIT_FSIZE); also caps stdout, stderr and /tmp, /sandbox sizes."""
    open_files: int = 256
    """Open file descriptors per process (RLIMIT_NOFILE)."""
    output_bytes: int = 1 << 20
    """stdout and stderr kept in the result, each; the rest is dropped and `*_truncated` set."""

    def with_(self, **changes) -> Limits:
        return replace(self, **changes)

    def check(self) -> None:
        for name in ("wall_s", "cpu_s", "memory_mb", "processes", "file_size_mb", "open_files", "output_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"sandbox limit {name}={value!r} must be a positive number.")


@dataclass
class RunResult:
    """What one program did: its output, how it ended, and how long it took.

    `exit_code` is the program's exit status, or 128 + N when signal N killed it (the shell's
    convention, which bubblewrap follows); None when the sandbox killed it at the wall-clock limit.
    """

    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool = False
    wall_s: float = 0.0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    confined: bool = True  # False: run with `unconfined_ok=True` where namespaces were unavailable
    extra: dict = field(default_factory=dict)  # e.g. the harness's result channel

    @property
    def ok(self) -> bool:
        """Exited by itself with status 0."""
        return self.exit_code == 0 and not self.timed_out

    @property
    def signal(self) -> str | None:
        """The name of the signal that killed the program (SIGKILL, SIGXCPU...), if one did."""
        if self.exit_code is None or self.exit_code <= 128:
            return None
        number = self.exit_code - 128
        return signal.Signals(number).name if number in signal.valid_signals() else None

    def describe(self) -> str:
        """One line for logs: 'exit 0', 'timed out after 10 s', 'killed by SIGXCPU'..."""
        if self.timed_out:
            return f"timed out after {self.wall_s:.1f} s"
        if self.signal:
            hint = {"SIGXCPU": " (CPU-time limit)", "SIGXFSZ": " (file-size limit)",
                    "SIGKILL": " (killed: CPU or memory limit?)"}.get(self.signal, "")
            return f"killed by {self.signal}{hint}"
        return f"exit {self.exit_code}"
