"""Run untrusted (model-written) Python in a separate, resource-limited process.

    from rewards.sandbox import run_sandboxed
    run_sandboxed("def solve(xs): return max(xs)", "solve([3, 1, 2])")   # SandboxResult(status='ok', value=3, ...)

Layers, outermost first (the kernel's and the OS ones are what protect the trainer; the Python ones
give clear messages):

0. The kernel sandbox (``rewards.kernel_sandbox``): own user/pid/network/IPC/mount namespaces, a root
   of its own (Python and system libraries read-only, a tmpfs working directory), Landlock, no
   capabilities, ``no_new_privs``, a seccomp filter. A refused action is a failed system call.
   Without it on this host, ``run_sandboxed`` refuses unless ``weaker_ok``.

1. A fresh ``python -I -S -B`` process in its own session (killed as a process group), a minimal
   environment (no secrets from ours), stdin/stdout pipes only; the parent never executes, imports or
   unpickles anything from the child: it reads at most ``_OUTPUT_CAP`` bytes and parses one JSON line
   tagged with a per-run nonce.
2. A wall-clock deadline enforced by the parent (``os.killpg(SIGKILL)``), plus rlimits set by the child
   before any user code: address space, CPU seconds (SIGXCPU -> "timeout"), file size, open files,
   core dumps and processes (root ignores ``RLIMIT_NPROC``, hence also the audit hook).
3. A throwaway working directory (``tempfile.mkdtemp``), always removed by the parent.
4. In the child, a ``sys.addaudithook`` hook (hooks cannot be removed once added) refusing process
   creation, signals to other processes, sockets, ctypes, rlimit changes, writes (and reads) outside the
   working directory (reads of the stdlib stay allowed so imports work), loading modules whose
   powers the hook cannot police (``_posixsubprocess``, ``_ctypes``, ...); plus an import whitelist on
   ``builtins.__import__`` for imports written in the user code, and ``signal.*`` handler functions and
   ``_thread.start_new_thread`` replaced by refusals (they raise no audit event in 3.11).
   A refusal is recorded before it is raised, so catching it does not hide it: the run is "forbidden".

The Python layers alone are not a security boundary against adversarial code: introspection can reach
the runner's frames and turn them off. That is why the kernel's layer holds on its own (its tests run
with the Python guards left out), and why nothing the code can reach decides the verdict: the run's
time is judged by the parent's clock, and rewards compare the returned values in the parent.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rewards import kernel_sandbox

Status = Literal["ok", "timeout", "memory", "forbidden", "error", "crash"]

DEFAULT_ALLOWED: frozenset[str] = frozenset(
    {
        "math",
        "random",
        "itertools",
        "functools",
        "collections",
        "heapq",
        "bisect",
        "re",
        "string",
        "statistics",
        "fractions",
        "decimal",
        "operator",
        "typing",
        "dataclasses",
    }
)

_OUTPUT_CAP = 64 * 1024  # bytes of child stdout kept (the tail); the result line must fit
_FILE_SIZE_LIMIT = 1024 * 1024  # RLIMIT_FSIZE: the largest file the code may write
_OPEN_FILES_LIMIT = 32  # RLIMIT_NOFILE
_CHILD_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
_TMPFS_MB = 16  # the kernel sandbox's writable space: every file the code writes, together


@dataclass
class SandboxResult:
    """What one sandboxed run produced."""

    status: Status
    """"ok", or why there is no value: "timeout" (wall clock or CPU limit), "memory" (MemoryError),
    "forbidden" (the sandbox refused an operation or import), "error" (the code raised),
    "crash" (the child died without a result)."""
    value: Any = None
    """The JSON value of ``call`` (a ``repr`` string when not JSON-able); for a list of calls, one
    ``{"ok": True, "value": v}`` or ``{"ok": False, "error": "..."}`` per call."""
    error: str = ""
    """Why the status is not "ok" (exception text, refused operation, limit hit)."""
    seconds: float = 0.0
    """Wall-clock seconds from spawn to cleanup."""
    pid: int = 0
    """The child's pid, which is also its process group id (all of it is dead on return)."""


class SandboxUnavailable(ValueError):
    """This host's kernel lacks part of the sandbox, and the caller did not accept a weaker one."""


def kernel_plan(weaker_ok: bool = False) -> dict | None:
    """The kernel layer this host gives a run (``rewards.kernel_sandbox``), or None (Python guards only,
    when ``weaker_ok``); raises ``SandboxUnavailable`` naming what is missing otherwise."""
    have = kernel_sandbox.features()
    if have["missing"] and not weaker_ok:
        raise SandboxUnavailable(
            "the kernel sandbox for model-written code is not available here: "
            + "; ".join(have["missing"])
            + ". Set the code_exec reward's weaker_sandbox: true "
            "to run with what there is"
        )
    if not have["namespaces"]:
        return None
    return {
        "landlock": have["landlock"],
        "seccomp": have["seccomp"],
        "reads": kernel_sandbox.read_roots(),
        "tmpfs_mb": _TMPFS_MB,
    }


def run_sandboxed(
    code: str,
    call: str | Sequence[str] | None = None,
    timeout_s: float = 2.0,
    memory_mb: int = 256,
    cpu_s: int = 2,
    allowed_imports: frozenset[str] = DEFAULT_ALLOWED,
    weaker_ok: bool = False,
    python_guards: bool = True,
) -> SandboxResult:
    """Execute ``code`` in a sandboxed child process, then evaluate ``call`` (an expression) there.

    ``call`` may be a list of expressions: each is evaluated separately (one raising does not stop
    the others) and the value is a list of per-call outcomes. ``timeout_s`` bounds the whole run in
    wall-clock seconds, ``cpu_s`` the child's CPU seconds, ``memory_mb`` its address space (the whole
    sandbox's: it can start no other process). Never raises for anything the code does; raises
    ``SandboxUnavailable`` where the kernel lacks part of the sandbox, unless ``weaker_ok``.
    ``python_guards=False`` leaves out the audit hook and import guard (tests of the kernel's part
    alone: model-written code may turn the Python guards off, so they must not be what protects).
    """
    if timeout_s <= 0 or cpu_s < 1 or memory_mb < 16:
        raise ValueError(f"bad limits: timeout_s={timeout_s}, cpu_s={cpu_s}, memory_mb={memory_mb}")
    kernel = kernel_plan(weaker_ok)
    calls = [call] if isinstance(call, str) else (None if call is None else [str(c) for c in call])
    nonce = secrets.token_hex(16)
    workdir = tempfile.mkdtemp(prefix="lorapop-sandbox-")
    request = {
        "code": code,
        "calls": calls,
        "single": isinstance(call, str),
        "nonce": nonce,
        "workdir": workdir,
        "allowed": sorted(allowed_imports),
        "memory_mb": int(memory_mb),
        "cpu_s": int(cpu_s),
        "fsize": _FILE_SIZE_LIMIT,
        "nofile": _OPEN_FILES_LIMIT,
        "cap": _OUTPUT_CAP - 1024,
        "kernel": kernel,
        "guards": bool(python_guards),
    }
    start = time.monotonic()
    deadline = start + timeout_s
    proc: subprocess.Popen | None = None
    try:
        argv = [sys.executable, "-I", "-S", "-B", "-c", _RUNNER]
        if kernel is not None:
            argv = kernel_sandbox.namespace_command(argv)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=workdir,
            env=_CHILD_ENV,
            start_new_session=True,
            close_fds=True,
        )
        assert proc.stdin is not None  # stdin=PIPE
        try:
            proc.stdin.write(json.dumps(request).encode())  # the child reads all of stdin first thing
            proc.stdin.close()
        except OSError:
            pass  # it died already; its exit status says why
        output, timed_out = _read_until(proc, deadline)
        if not timed_out:
            timed_out = not _wait_exit(proc.pid, deadline)
        _kill_group(proc)
        # the verdict on time is the parent's own: a result line written before the deadline ran out
        # does not make a run that had to be killed a finished one
        result = None if timed_out else _parse_result(output, nonce)
        if result is None:
            result = _no_result(proc.returncode, timed_out, timeout_s, cpu_s)
        result.pid = proc.pid
    finally:
        if proc is not None and proc.returncode is None:
            _kill_group(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    result.seconds = time.monotonic() - start
    return result


def _read_until(proc: subprocess.Popen, deadline: float) -> tuple[bytes, bool]:
    """Read the child's stdout until EOF or ``deadline``, keeping the last ``_OUTPUT_CAP`` bytes.

    Returns (output, timed_out).
    """
    assert proc.stdout is not None  # stdout=PIPE
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    buf = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(buf), True
            if not selector.select(remaining):
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                return bytes(buf), False
            buf += chunk
            if len(buf) > _OUTPUT_CAP:
                del buf[: len(buf) - _OUTPUT_CAP]


def _wait_exit(pid: int, deadline: float) -> bool:
    """Wait (without reaping, so the pid and its group id stay reserved) for ``pid`` to exit.

    False if it is still running at ``deadline`` (it may have closed stdout and kept going).
    """
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group (before reaping it, so the group id cannot be reused), then reap.

    In the kernel sandbox the child is ``unshare``, whose child is the namespace's init: that one is
    killed first (which ends every process of its namespace), so ``unshare`` reaps it and nothing is
    left as a zombie for the host's init to collect."""
    for child in _children(proc.pid):
        try:
            os.kill(child, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    _wait_exit(proc.pid, time.monotonic() + 2.0)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _parse_result(output: bytes, nonce: str) -> SandboxResult | None:
    """The last stdout line that is a JSON object carrying this run's nonce, as a result; else None."""
    for line in reversed(output.splitlines()):
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict) or message.get("nonce") != nonce:
            continue
        status = message.get("status")
        if status not in ("ok", "memory", "forbidden", "error"):
            return None
        return SandboxResult(status=status, value=message.get("value"), error=str(message.get("error", "")))
    return None


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux's /proc/<pid>/task/<pid>/children; [] where unreadable)."""
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except (OSError, ValueError):
        return []


def _no_result(returncode: int | None, timed_out: bool, timeout_s: float, cpu_s: int) -> SandboxResult:
    """Status for a child that produced no result line (in the kernel sandbox the namespace's init exits
    with 128 + the signal that ended the sandboxed interpreter)."""
    if timed_out:
        return SandboxResult("timeout", error=f"wall-clock limit of {timeout_s}s exceeded")
    if returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return SandboxResult("timeout", error=f"cpu limit of {cpu_s}s exceeded (SIGXCPU)")
    if returncode is not None and (returncode < 0 or 128 < returncode < 128 + 65):
        sig = -returncode if returncode < 0 else returncode - 128
        return SandboxResult("crash", error=f"killed by {signal.Signals(sig).name}")
    return SandboxResult("crash", error=f"exited with code {returncode} without a result")


# The child's program, run as `python -I -S -B -c _RUNNER`. It reads the JSON request from stdin,
# locks itself down, runs the code, and writes one JSON line to a private duplicate of stdout
# (fd 1 itself is pointed at /dev/null so the code's prints cannot garble the result).
_RUNNER = r'''
import builtins, json, os, resource, signal, sys


class SandboxViolation(BaseException):
    """Raised when the code does something the sandbox forbids (BaseException: `except Exception` misses it)."""


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_REFUSED = {
    "os.system", "os.kill", "os.killpg", "os.forkpty", "os.symlink", "os.chdir", "os.fchdir",
    "os.chflags", "os.lchflags", "os.setxattr", "os.removexattr", "signal.pthread_kill",
    "sys._current_frames", "gc.get_objects", "gc.get_referrers", "gc.get_referents", "mmap.__new__",
    "pty.spawn", "shutil.unpack_archive", "shutil.make_archive", "webbrowser.open",
}
_REFUSED_PREFIXES = (
    "os.fork", "os.exec", "os.spawn", "os.posix_spawn", "subprocess.", "socket.", "ctypes.", "resource.",
    "fcntl.", "syslog.", "_thread.", "http.", "urllib.", "ftplib.", "smtplib.", "poplib.", "imaplib.",
    "nntplib.", "telnetlib.",
)
# event -> (indices of path arguments, indices of dir_fd arguments that must be unset: None, or -1 as
# CPython passes an absent dir_fd to the audit hook)
_PATH_EVENTS = {
    "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
    "os.rename": ((0, 1), (2, 3)), "os.link": ((0, 1), (2, 3)), "os.truncate": ((0,), ()),
    "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)), "os.utime": ((0,), (3,)),
    "shutil.rmtree": ((0,), (1,)), "shutil.copyfile": ((0, 1), ()), "shutil.copymode": ((0, 1), ()),
    "shutil.copystat": ((0, 1), ()), "shutil.copytree": ((0, 1), ()), "shutil.move": ((0, 1), ()),
    "shutil.chown": ((0,), ()),
}
_READ_EVENTS = ("os.listdir", "os.scandir", "glob.glob")
# Modules whose capabilities the hook does not audit; loading one (e.g. reached through another
# module's attributes) is refused unless whitelisted. Other stdlib modules may load lazily
# (``str.encode("idna")`` loads ``encodings.idna`` and ``stringprep``).
_NEVER_LOAD = frozenset({
    "subprocess", "_posixsubprocess", "ctypes", "_ctypes", "socket", "_socket", "ssl", "_ssl",
    "multiprocessing", "_multiprocessing", "concurrent", "asyncio", "threading", "mmap", "pty", "tty",
    "fcntl", "termios", "select", "selectors", "resource", "signal", "_signal", "importlib", "_imp",
    "gc", "inspect", "pickle", "_pickle", "marshal", "shutil", "tempfile", "os", "posix", "sys", "io", "_io",
})
_READABLE_FILES = ("/dev/null", "/dev/urandom")
_SIGNAL_FUNCTIONS = ("signal", "setitimer", "alarm", "pthread_sigmask", "siginterrupt", "set_wakeup_fd",
                     "raise_signal", "pthread_kill", "sigwait", "sigwaitinfo", "sigtimedwait")


def _under(path, roots):
    """Whether ``path`` (str or bytes; not a file descriptor) resolves inside one of ``roots``."""
    if not isinstance(path, (str, bytes)):
        return False
    try:
        real = os.path.realpath(os.fsdecode(path))
    except Exception:
        return False
    return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def main():
    request = json.loads(sys.stdin.buffer.read())
    kernel = request["kernel"]
    if kernel is not None:
        _kernel_init()  # this process stays the pid namespace's init; the sandbox goes on in its child
    nonce, allowed = request["nonce"], frozenset(request["allowed"])
    out_fd = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    workdir = os.path.realpath(request["workdir"])
    os.chdir(workdir)
    if kernel is not None:  # in its own namespaces: a root of its own, the working directory in a tmpfs
        _kernel_root(workdir, kernel["tmpfs_mb"], kernel["reads"])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an over-large write raises OSError instead of killing us
    memory = request["memory_mb"] * 1024 * 1024
    for limit, value in (
        (resource.RLIMIT_AS, (memory, memory)),
        (resource.RLIMIT_CPU, (request["cpu_s"], request["cpu_s"] + 1)),
        (resource.RLIMIT_FSIZE, (request["fsize"], request["fsize"])),
        (resource.RLIMIT_NOFILE, (request["nofile"], request["nofile"])),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_NPROC, (0, 0)),  # ignored for root; the audit hook covers that case
    ):
        resource.setrlimit(limit, value)

    for name in sorted(allowed):  # load whitelisted modules (and their dependencies) before locking imports
        try:
            __import__(name)
        except Exception:
            pass

    violations = []

    def refuse(what):
        violations.append(what)
        raise SandboxViolation(what)

    readable = tuple({os.path.realpath(p) for p in sys.path if p}) + (workdir,)
    writable = (workdir,)

    def hook(event, args):
        if event == "open":
            path = args[0]
            mode = args[1] if len(args) > 1 else None
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(flags & _WRITE_FLAGS)
            if isinstance(path, int):
                refuse("opening a file descriptor")
            if writing and not _under(path, writable):
                refuse(f"writing {os.fsdecode(path)!r} outside the working directory")
            if not writing and not _under(path, readable) and os.fsdecode(path) not in _READABLE_FILES:
                refuse(f"reading {os.fsdecode(path)!r} outside the working directory")
        elif event == "import":
            top = str(args[0]).partition(".")[0]
            if top in _NEVER_LOAD and top not in allowed:
                refuse(f"loading module {args[0]!r}")
        elif event in _REFUSED or event.startswith(_REFUSED_PREFIXES):
            refuse(f"{event} is not allowed")
        elif event in _PATH_EVENTS:
            paths, dir_fds = _PATH_EVENTS[event]
            if any(i < len(args) and args[i] not in (None, -1) for i in dir_fds):
                refuse(f"{event} with dir_fd")
            for i in paths:
                if i < len(args) and not _under(args[i], writable):
                    refuse(f"{event} on {args[i]!r} outside the working directory")
        elif event in _READ_EVENTS:
            if args and args[0] is not None and not _under(args[0], readable):
                refuse(f"{event} on {args[0]!r} outside the working directory")

    def refuse_signals(*args, **kwargs):
        refuse("changing signal handling")

    def refuse_threads(*args, **kwargs):
        refuse("starting threads")

    import _signal, _thread
    # signal.signal and _thread.start_new_thread raise no audit event (3.11): replace them instead
    for module, names, replacement in (
        (signal, _SIGNAL_FUNCTIONS, refuse_signals),
        (_signal, _SIGNAL_FUNCTIONS, refuse_signals),
        (_thread, ("start_new_thread", "start_new"), refuse_threads),
    ) if request["guards"] else ():
        for name in names:
            if hasattr(module, name):
                setattr(module, name, replacement)

    real_import = builtins.__import__

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        module = sys.modules.get(globals.get("__name__")) if isinstance(globals, dict) else None
        if module is None or getattr(module, "__dict__", None) is not globals:  # not a loaded module's own
            if level:
                refuse("relative imports are not allowed")
            if name.partition(".")[0] not in allowed:
                refuse(f"import of {name!r} is not allowed")
        return real_import(name, globals, locals, fromlist, level)

    def describe(exc):
        tb, line = exc.__traceback__, None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<sandbox>":
                line = tb.tb_lineno
            tb = tb.tb_next
        where = f" (line {line})" if line is not None else ""
        return f"{type(exc).__name__}: {exc}{where}"[:2000]

    def jsonable(value):
        try:
            json.dumps(value)
            return value
        except (TypeError, ValueError):
            return repr(value)

    if kernel is not None:  # from here on the kernel refuses what the sandbox does not allow
        _kernel_lockdown(kernel, workdir)
    if request["guards"]:
        sys.addaudithook(hook)
        builtins.__import__ = guarded_import
    namespace = {"__name__": "__sandbox__", "__builtins__": builtins}
    status, value, error = "ok", None, ""
    try:
        exec(compile(request["code"], "<sandbox>", "exec"), namespace)
        calls = request["calls"]
        if request["single"]:
            value = jsonable(eval(compile(calls[0], "<call>", "eval"), namespace))
        elif calls is not None:
            value = []
            for call in calls:
                try:
                    value.append({"ok": True, "value": jsonable(eval(compile(call, "<call>", "eval"), namespace))})
                except (SandboxViolation, MemoryError):
                    raise
                except Exception as exc:
                    value.append({"ok": False, "error": describe(exc)})
    except SandboxViolation as exc:
        status, value, error = "forbidden", None, str(exc)
    except MemoryError:
        status, value, error = "memory", None, f"MemoryError (limit {request['memory_mb']} MB)"
    except BaseException as exc:
        status, value, error = "error", None, describe(exc)
    namespace = None  # frees what the code allocated (matters after a MemoryError)
    if violations:  # even if the code caught the refusal
        status, value, error = "forbidden", None, violations[0]
    line = json.dumps({"nonce": nonce, "status": status, "value": value, "error": error})
    if len(line) > request["cap"]:
        line = json.dumps({"nonce": nonce, "status": "error", "value": None,
                           "error": f"result too large ({len(line)} bytes)"})
    data = (line + "\n").encode()
    while data:
        data = data[os.write(out_fd, data):]
    os._exit(0)  # no interpreter teardown: no user __del__ or atexit code after the result


main()
'''
_RUNNER = kernel_sandbox.LOCKDOWN + _RUNNER  # the kernel's part first (defined, run by main when the request says so)
