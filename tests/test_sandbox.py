"""The sandbox contains misbehaving code: each attack gets its status within its time limit, leaves
nothing behind (process group, temp dir, files) and leaves the test process as it was; code_exec
turns outcomes into rewards; CodeTaskEnv's reference solutions pass their own tests."""

from __future__ import annotations

import os
import signal
import tempfile
import time
import uuid

import pytest

from envs.code_task import DIFFICULTIES, CodeTaskEnv
from rewards.code_reward import code_exec
from rewards.sandbox import SandboxResult, run_sandboxed

WITH_OS = frozenset({"os"})


@pytest.fixture(autouse=True)
def unharmed():
    """The test process keeps its cwd and signal handlers across every test."""
    cwd, handlers = os.getcwd(), {s: signal.getsignal(s) for s in (signal.SIGALRM, signal.SIGINT, signal.SIGTERM)}
    yield
    assert os.getcwd() == cwd
    assert {s: signal.getsignal(s) for s in handlers} == handlers


@pytest.fixture
def workdirs(monkeypatch) -> list[str]:
    """Records the temp directories the sandbox creates."""
    made: list[str] = []
    real = tempfile.mkdtemp

    def recording(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recording)
    return made


def run(code: str, call=None, **kwargs) -> SandboxResult:
    """run_sandboxed, asserting it returned within its wall-clock limit (+2 s) and left no process behind."""
    start = time.monotonic()
    result = run_sandboxed(code, call, **kwargs)
    assert time.monotonic() - start < kwargs.get("timeout_s", 2.0) + 2.0
    with pytest.raises(ProcessLookupError):
        os.killpg(result.pid, 0)  # the child's process group is gone
    return result


def test_correct_solution_returns_its_value():
    result = run("def solve(xs):\n    return sorted(xs)", "solve([3, 1, 2])")
    assert (result.status, result.value) == ("ok", [1, 2, 3])


def test_raising_solution_is_an_error_with_the_message():
    result = run("def solve():\n    return 1 / 0", "solve()")
    assert result.status == "error"
    assert "ZeroDivisionError" in result.error


def test_infinite_loop_hits_the_wall_clock():
    result = run("while True:\n    pass", timeout_s=1.0)
    assert result.status == "timeout"
    assert "wall-clock" in result.error


def test_cpu_loop_hits_the_cpu_limit_before_a_longer_wall_clock():
    result = run("while True:\n    pass", timeout_s=8.0, cpu_s=1)
    assert result.status == "timeout"
    assert "cpu" in result.error


def test_unbounded_allocation_is_memory():
    result = run("x = []\nwhile True:\n    x.append(' ' * 10**6)", memory_mb=128)
    assert result.status == "memory"


def test_importing_os_is_forbidden():
    assert run("import os\nos.fork()").status == "forbidden"


def test_fork_is_refused_even_with_os_allowed_and_even_if_caught():
    result = run("import os\nos.fork()", allowed_imports=WITH_OS)
    assert result.status == "forbidden"
    assert "fork" in result.error
    caught = run("import os\ntry:\n    os.fork()\nexcept BaseException:\n    pass\nx = 1", "x", allowed_imports=WITH_OS)
    assert caught.status == "forbidden"


def test_network_socket_is_forbidden():
    code = "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))"
    assert run(code, allowed_imports=frozenset({"socket"})).status == "forbidden"


def test_writing_outside_the_workdir_is_forbidden_and_leaves_no_file():
    target = os.path.join(tempfile.gettempdir(), f"pwned_{uuid.uuid4().hex}")
    result = run(f"open({target!r}, 'w').write('x')")
    assert result.status == "forbidden"
    assert not os.path.exists(target)
    assert run("open('../escaped', 'w').write('x')").status == "forbidden"


def test_writing_inside_the_workdir_works():
    result = run("with open('notes.txt', 'w') as f:\n    f.write('hi')\ntext = open('notes.txt').read()", "text")
    assert (result.status, result.value) == ("ok", "hi")


def test_files_and_directories_inside_the_workdir_can_be_made_renamed_and_removed():
    """#13: CPython passes dir_fd=-1 (not None) to the audit hook when none is given: still allowed."""
    code = (
        "import os\nos.mkdir('d')\nos.rename('d', 'e')\nopen('e/f', 'w').write('x')\nos.link('e/f', 'g')\n"
        "os.remove('e/f')\nos.rmdir('e')\nleft = sorted(os.listdir('.'))"
    )
    result = run(code, "left", allowed_imports=WITH_OS)
    assert (result.status, result.value) == ("ok", ["g"]), result.error
    outside = run("import os\nos.mkdir('../made_outside')", allowed_imports=WITH_OS)
    assert outside.status == "forbidden"


def test_importing_a_forbidden_module_is_forbidden():
    result = run("import subprocess\nsubprocess.run(['true'])")
    assert result.status == "forbidden"
    assert "subprocess" in result.error
    assert run("__import__('os')").status == "forbidden"


def test_signal_tampering_is_forbidden():
    code = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)"
    assert run(code, allowed_imports=frozenset({"signal"})).status == "forbidden"


def test_killing_the_parent_is_forbidden_and_we_survive():
    result = run("import os\nos.kill(os.getppid(), 9)", allowed_imports=WITH_OS)
    assert result.status == "forbidden"
    assert "os.kill" in result.error


def test_child_dying_without_a_result_is_a_crash_and_cannot_forge_one():
    forged = 'import random\nrandom._os.write(3, b\'{"status": "ok", "value": 1}\\n\')\nrandom._os._exit(0)'
    result = run(forged)
    assert (result.status, result.value) == ("crash", None)


def test_temp_dir_is_removed_after_each_run(workdirs):
    run("open('f', 'w').write('x')\nx = 1", "x")
    run("open('f', 'w').write('x')\nwhile True:\n    pass", timeout_s=0.5)
    assert len(workdirs) == 2
    assert not any(os.path.exists(d) for d in workdirs)


# --- code_exec -----------------------------------------------------------------------------------

TESTS = [{"call": "solve(2)", "expected": 4}, {"call": "solve(3)", "expected": 9}, {"call": "solve(0)", "expected": 0}]


def as_message(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_code_exec_rewards():
    fn = code_exec(timeout_s=1.0)
    completions = [
        "<think>square</think><answer>def solve(n):\n    return n * n</answer>",  # all pass
        as_message("```python\ndef solve(n):\n    return n + n\n```"),  # solve(2), solve(0) pass
        as_message("<answer>def solve(n):\n    while True:\n        pass</answer>"),  # timeout
        "I don't know.",  # no code
        as_message("<answer>import os</answer>"),  # forbidden
        "<answer>def solve(n) return</answer>",  # syntax error
    ]
    scores = fn(prompts=["q"] * len(completions), completions=completions, tests=[TESTS] * len(completions))
    assert scores == [1.0, pytest.approx(2 / 3), -1.0, 0.0, -1.0, 0.0]
    assert fn.__name__ == "code_exec"


def test_code_exec_needs_a_tests_column():
    with pytest.raises(KeyError, match="tests"):
        code_exec()(prompts=["q"], completions=["<answer>x = 1</answer>"])


def test_code_exec_failure_rewards_are_overridable():
    fn = code_exec(rewards={"no_code": -0.5})
    assert fn(prompts=["q"], completions=["nothing"], tests=[TESTS]) == [-0.5]


# --- CodeTaskEnv ---------------------------------------------------------------------------------


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_reference_solutions_pass_their_own_tests(difficulty):
    env = CodeTaskEnv(seed=7, difficulty=difficulty)
    rows = env.batch(step=0, n=4) + env.eval_rows(2)
    assert all(3 <= len(row["tests"]) <= 5 for row in rows)
    scores = code_exec()(
        prompts=[r["prompt"] for r in rows],
        completions=[env.solution_text(r) for r in rows],
        tests=[r["tests"] for r in rows],
    )
    assert scores == [1.0] * len(rows)


def test_code_task_batch_is_deterministic():
    env = CodeTaskEnv(seed=3, difficulty=2)
    assert env.batch(5, 4) == CodeTaskEnv(seed=3, difficulty=2).batch(5, 4)
    assert env.batch(5, 4) != env.batch(6, 4)
    assert env.eval_rows(3) == env.eval_rows(3)
    assert env.eval_rows(3) != env.batch(0, 3)
