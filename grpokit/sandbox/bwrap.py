"""The command line that confines one program: bubblewrap for namespaces, util-linux for the rest.

    bwrap  [new PID, network, mount, IPC, UTS (and user) namespaces; read-only system folders;
            a size-limited tmpfs for /sandbox and /tmp; no environment; dies with its parent]
      setpriv  [only when we are root: become an unprivileged uid, drop every capability]
        prlimit  [RLIMIT_AS, CPU, NPROC, FSIZE, NOFILE, set inside the new user namespace]
          python -I main.py

Why these tools: bubblewrap is the sandbox Flatpak is built on, small and audited; setpriv and
prlimit ship with util-linux on every Linux. Nothing here is a home-made confinement.

Why the limits are set inside (prlimit) rather than before bwrap starts: RLIMIT_NPROC counts the
processes of one user. Set inside a fresh user namespace it counts only this sandbox's; set
outside it would count every process the user runs (the trainer's threads included).
Why root drops to a uid of its own per worker slot: the kernel never applies RLIMIT_NPROC to uid 0,
so a root sandbox needs a real unprivileged uid, and one per slot keeps sandboxes from sharing a count.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

from grpokit.sandbox.limits import Limits, SandboxUnavailable

SANDBOX_DIR = "/sandbox"  # the program's working directory inside, a fresh tmpfs each run
DEFAULT_UID_BASE = 60000  # root only: slot k runs as uid/gid DEFAULT_UID_BASE + k (as the IOI `isolate` does)
_SYSTEM_DIRS = ("/usr", "/etc")
_TOP_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

INSTALL_HINT = (
    "Install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap) and make "
    "sure user namespaces are allowed (sysctl kernel.unprivileged_userns_clone=1, or in Docker run with "
    "--security-opt seccomp=unconfined or use a VM). To run without that confinement anyway (no network, "
    "filesystem or process isolation; only resource limits), pass unconfined_ok=True: see docs/sandbox.md."
)


def python_dirs(executable: str) -> list[str]:
    """The folders a Python interpreter needs: the folder above its bin/, as given and with symlinks
    resolved, and for ours (the same binary) its prefixes too (venv and base)."""
    candidates = [os.path.dirname(os.path.dirname(os.path.abspath(executable))),
                  os.path.dirname(os.path.dirname(os.path.realpath(executable)))]
    if os.path.realpath(executable) == os.path.realpath(sys.executable):
        candidates += [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    return [os.path.realpath(p) for p in candidates if p and os.path.isdir(p)]


def _read_only_binds(extra_dirs: list[str], mounted: tuple[str, ...] = ()) -> list[str]:
    """--ro-bind for the system and Python folders, each ancestor made traversable (0755) first,
    except the folders in `mounted`, already made by an earlier argument (the sandbox's own /tmp)."""
    args: list[str] = []
    for link in _TOP_LINKS:  # merged /usr: /lib -> usr/lib is a symlink, kept as one
        if os.path.islink(link):
            args += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            args += ["--ro-bind", link, link]
    bound: list[str] = [d for d in _SYSTEM_DIRS if os.path.isdir(d)]
    for d in bound:
        args += ["--ro-bind", d, d]
    made: set[str] = set(mounted)
    for path in sorted(set(extra_dirs), key=len):
        if any(path == b or path.startswith(b + "/") for b in bound):
            continue
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            parent = "/" + "/".join(parts[:i])
            if parent not in made:  # bwrap would create it 0700, which an unprivileged uid cannot cross
                args += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        args += ["--ro-bind", path, path]
        bound.append(path)
    return args


def prlimit_args(limits: Limits) -> list[str]:
    mib = 1 << 20
    return [f"--as={limits.memory_mb * mib}", f"--cpu={int(limits.cpu_s)}:{int(limits.cpu_s) + 1}",
            f"--nproc={limits.processes}", f"--fsize={limits.file_size_mb * mib}",
            f"--nofile={limits.open_files}", "--core=0"]


def bwrap_command(bwrap: str, limits: Limits, program: list[str], files: dict[str, int], info_fd: int,
                  python: str, uid: int | None) -> list[str]:
    """The full argv. `files` maps a name under /sandbox to a readable fd (bwrap copies it in);
    `uid` is the unprivileged uid to become (root only), or None to keep ours in a new user namespace."""
    size = str(limits.file_size_mb << 20)
    args = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--hostname", "sandbox", "--clearenv", "--info-fd", str(info_fd)]
    if uid is None:
        args += ["--unshare-user"]
    else:  # root: keep just the two capabilities setpriv needs to become `uid`; setpriv then drops all
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    # The fresh /tmp first, then the read-only folders: a Python under /tmp (a venv in a CI checkout
    # such as /tmp/build/.venv) stays visible instead of being hidden by the new /tmp.
    args += ["--dev", "/dev", "--proc", "/proc", "--size", size, "--perms", "01777", "--tmpfs", "/tmp"]
    args += _read_only_binds(python_dirs(python), mounted=("/tmp",))
    args += ["--size", size, "--perms", "01777", "--tmpfs", SANDBOX_DIR]
    for name, fd in files.items():
        args += ["--perms", "0644", "--file", str(fd), f"{SANDBOX_DIR}/{name}"]
    args += ["--chdir", SANDBOX_DIR, "--"]
    if uid is not None:
        args += [_tool("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                 "--bounding-set=-all", "--no-new-privs", "--"]
    return args + [_tool("prlimit"), *prlimit_args(limits), "--", *program]


def unconfined_command(limits: Limits, program: list[str]) -> list[str]:
    """Opt-in fallback: resource limits only, in this machine's namespaces."""
    return [_tool("prlimit"), *prlimit_args(limits), "--", *program]


@functools.cache
def _tool(name: str) -> str:
    for folder in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        path = os.path.join(folder, name)
        if os.access(path, os.X_OK):
            return path  # an absolute path under /usr: the same file exists inside the sandbox
    found = shutil.which(name)
    if not found:
        raise SandboxUnavailable(f"the util-linux tool {name!r} was not found; install util-linux.")
    return found


@functools.cache
def probe(bwrap: str, python: str) -> str:
    """Start one trivial confined program; return the bwrap path, or raise SandboxUnavailable with why."""
    path = shutil.which(bwrap)
    if path is None:
        raise SandboxUnavailable(f"bubblewrap ({bwrap!r}) is not installed, so programs cannot be confined. "
                                 + INSTALL_HINT)
    uid = DEFAULT_UID_BASE if os.geteuid() == 0 else None
    read_fd, write_fd = os.pipe()
    try:
        argv = bwrap_command(path, Limits(), [python, "-I", "-S", "-c", "pass"], {}, write_fd, python, uid)
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                              pass_fds=(write_fd,), env={}, start_new_session=True)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SandboxUnavailable(f"bubblewrap at {path} could not start a test program ({e}). " + INSTALL_HINT) from e
    finally:
        os.close(read_fd)
        os.close(write_fd)
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace").strip()[-400:]
        raise SandboxUnavailable(f"bubblewrap at {path} could not confine a test program (exit {done.returncode}: "
                                 f"{stderr or 'no message'}). " + INSTALL_HINT)
    return path
