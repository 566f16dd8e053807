"""#13: the kernel's part of the code sandbox holds on its own. Every attempt runs with the Python-level
guards left out (``python_guards=False``: model-written code can turn those off), and each test checks
from outside the sandbox that nothing leaked, changed or was signalled, and that a defined result came
back."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from rewards.kernel_sandbox import features
from rewards.sandbox import SandboxResult, SandboxUnavailable, kernel_plan, run_sandboxed

pytestmark = pytest.mark.skipif(
    bool(features()["missing"]), reason=f"kernel sandbox unavailable: {features()['missing']}"
)

DEFINED = {"ok", "timeout", "memory", "forbidden", "error", "crash"}


def attempt(code: str, call: str | None = None, **kwargs) -> SandboxResult:
    result = run_sandboxed(code, call, python_guards=False, **kwargs)
    assert result.status in DEFINED
    return result


def test_a_correct_solution_still_runs():
    result = attempt("def solve(xs):\n    return sorted(xs)[-1]", "solve([3, 9, 2])")
    assert (result.status, result.value) == ("ok", 9)


def test_reading_a_file_outside_the_sandbox_gets_nothing(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOKEN-" + uuid.uuid4().hex)
    for path in (str(secret), f"/proc/{os.getpid()}/environ", "/etc/shadow", "/root/.bashrc"):
        result = attempt(f"try:\n    got = open({path!r}).read()\nexcept OSError as e:\n    got = repr(e)", "got")
        assert result.status == "ok" and "TOKEN-" not in str(result.value) and "PATH=" not in str(result.value), path


def test_the_hosts_files_are_not_even_visible(tmp_path):
    """Not readable, and no metadata either: the sandbox has a root of its own (Python, system libraries)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    os.symlink(secret, tmp_path / "link")
    code = f"""import os
seen = []
for what, fn in [("stat", lambda: os.stat({str(secret)!r})), ("readlink", lambda: os.readlink({str(tmp_path / "link")!r})),
                 ("exists", lambda: os.path.exists({str(tmp_path)!r}) or os.path.exists("/etc/passwd") or None),
                 ("repo", lambda: os.path.exists({str(os.getcwd())!r}) or None)]:
    try:
        if fn() is not None:
            seen.append(what)
    except OSError:
        pass
"""
    result = attempt(code, "seen")
    assert (result.status, result.value) == ("ok", [])


def test_writing_outside_or_making_device_nodes_and_fifos_changes_nothing(tmp_path):
    target = tmp_path / f"pwned-{uuid.uuid4().hex}"
    code = f"""import os, stat
done = []
for what, fn in [("write", lambda: open({str(target)!r}, "w").write("x")),
                 ("fifo", lambda: os.mkfifo({str(target) + ".fifo"!r})),
                 ("device here", lambda: os.mknod("kmsg", stat.S_IFCHR | 0o600, os.makedev(1, 11))),
                 ("device there", lambda: os.mknod({str(target) + ".dev"!r}, stat.S_IFCHR | 0o600, os.makedev(1, 3)))]:
    try:
        fn()
        done.append(what)
    except OSError:
        pass
"""
    result = attempt(code, "done")
    assert result.status == "ok" and result.value == []
    assert list(tmp_path.iterdir()) == []


def test_the_parent_cannot_be_signalled_reniced_or_traced():
    me, nice = os.getpid(), os.getpriority(os.PRIO_PROCESS, 0)
    code = f"""import os, signal
done = []
for what, fn in [("kill", lambda: os.kill({me}, signal.SIGKILL)), ("killpg", lambda: os.killpg(0, signal.SIGKILL)),
                 ("pidfd", lambda: signal.pidfd_send_signal(os.pidfd_open({me}), signal.SIGKILL)),
                 ("renice", lambda: os.setpriority(os.PRIO_PROCESS, {me}, 19)),
                 ("renice all", lambda: os.setpriority(os.PRIO_USER, 0, 19))]:
    try:
        fn()
        done.append(what)
    except OSError:
        pass
try:  # (landlock keeps /proc out of reach too; the pid namespace would show this process alone)
    others = [p for p in os.listdir("/proc") if p.isdigit() and p != str(os.getpid())]
except OSError:
    others = []
"""
    result = attempt(code, "[done, others]")
    assert result.status == "ok" and result.value == [[], []]  # nothing done, no other process visible
    assert os.getpriority(os.PRIO_PROCESS, 0) == nice


def test_no_process_thread_or_shell_can_be_started(tmp_path):
    marker = tmp_path / "ran"
    code = f"""import os, subprocess, threading
done = []
for what, fn in [("fork", os.fork), ("system", lambda: os.system("touch {marker}") == 0 and os.path.exists({str(marker)!r})),
                 ("subprocess", lambda: subprocess.run(["touch", {str(marker)!r}])),
                 ("thread", lambda: threading.Thread(target=print).start())]:
    try:
        if fn():
            done.append(what)
    except (OSError, RuntimeError):
        pass
"""
    result = attempt(code, "done")
    assert (result.status, result.value) == ("ok", []) and not marker.exists()


def test_no_network_reaches_a_local_listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = f"""import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"hello")
    got = "connected"
except OSError as e:
    got = type(e).__name__
"""
    result = attempt(code, "got")
    assert result.status == "ok" and result.value != "connected"
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()


def test_memory_and_disk_are_bounded_for_the_whole_sandbox(tmp_path):
    mem = attempt("blocks = [bytearray(200 * 1024 * 1024) for _ in range(8)]", memory_mb=256)
    assert mem.status in ("memory", "error", "crash")
    disk = attempt(
        """written = 0
try:
    for i in range(200):
        with open(f"f{i}", "wb") as f:
            f.write(b"x" * (1024 * 1024))
        written += 1
except OSError:
    pass
""",
        "written",
    )
    assert disk.status == "ok" and disk.value < 20  # the tmpfs holds 16 MiB in all, not 1 MiB a file


def test_a_forged_result_line_does_not_turn_a_timeout_into_a_result():
    """The code finds the run's nonce and writes an 'ok' line itself, then runs past the deadline: the
    parent's own clock decides."""
    code = """import gc, json, os
request = next(o for o in gc.get_objects() if isinstance(o, dict) and "nonce" in o)
line = (json.dumps({"nonce": request["nonce"], "status": "ok", "value": [{"ok": True, "value": 1}], "error": ""}) + "\\n").encode()
for fd in range(3, 12):
    try:
        os.write(fd, line)
    except OSError:
        pass
while True:
    pass
"""
    result = attempt(code, ["1"], timeout_s=1.0)
    assert result.status == "timeout"


def test_a_host_without_the_kernel_sandbox_is_refused_unless_accepted(monkeypatch):
    import rewards.kernel_sandbox as ks

    monkeypatch.setattr(
        ks, "features", lambda: {"namespaces": False, "landlock": 0, "seccomp": False, "missing": ["Landlock (test)"]}
    )
    with pytest.raises(SandboxUnavailable, match="Landlock \\(test\\).*weaker_sandbox: true"):
        kernel_plan()
    assert kernel_plan(weaker_ok=True) is None
    assert run_sandboxed("x = 2", "x", weaker_ok=True).value == 2  # the Python guards alone


def test_the_code_can_still_signal_itself():
    """abort() and friends signal the process itself: that stays allowed (and is a crash, not a hang)."""
    result = attempt("import os, signal\nos.kill(os.getpid(), signal.SIGABRT)")
    assert result.status == "crash" and "SIGABRT" in result.error


def test_code_exec_on_a_host_without_the_sandbox_is_a_config_error_unless_accepted(monkeypatch):
    import rewards.kernel_sandbox as ks
    from rewards.registry import RewardLoadError, load_reward

    monkeypatch.setattr(
        ks, "features", lambda: {"namespaces": False, "landlock": 0, "seccomp": False, "missing": ["namespaces (test)"]}
    )
    with pytest.raises(RewardLoadError, match="code_exec.*namespaces \\(test\\).*weaker_sandbox"):
        load_reward("code_exec")
    fn = load_reward("code_exec", {"weaker_sandbox": True})
    tests = [[{"call": "solve(2)", "expected": 4}]]
    assert fn(prompts=["p"], completions=["<answer>def solve(x):\n    return x * x</answer>"], tests=tests) == [1.0]


def test_each_code_exec_group_records_its_sandbox_and_a_weaker_one_is_said(monkeypatch):
    from types import SimpleNamespace

    import rewards.kernel_sandbox as ks
    from engine.config.schema import RewardSpec
    from engine.loop.coordinator import sandbox_events

    plans = [
        SimpleNamespace(name="code", rewards=[RewardSpec(name="code_exec")]),
        SimpleNamespace(name="sums", rewards=[RewardSpec(name="format_exact")]),
    ]
    said = []
    (row,) = sandbox_events(plans, said.append)
    assert (
        (row["group"], row["kind"]) == ("code", "sandbox") and row["detail"].startswith("kernel sandbox") and said == []
    )
    monkeypatch.setattr(
        ks, "features", lambda: {"namespaces": False, "landlock": 0, "seccomp": False, "missing": ["Landlock (test)"]}
    )
    (row,) = sandbox_events(plans, said.append)
    assert "weaker sandbox" in row["detail"] and "Landlock (test)" in row["detail"] and len(said) == 1
