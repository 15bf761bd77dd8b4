"""Built-in tools: calculator, PythonRunner, DocumentLookup, describe_tool."""

from __future__ import annotations

import json
import os
import time

import pytest

from posttrain.tools import BUILTIN_TOOLS, DocumentLookup, PythonRunner, calculator, describe_tool, python

posix_only = pytest.mark.skipif(os.name != "posix", reason="PythonRunner needs POSIX process limits")


# --- calculator -------------------------------------------------------------------------------------

@pytest.mark.parametrize("expression, expected", [
    ("12*(3+4)", "84"),
    ("2+3*4", "14"),             # precedence
    ("(2+3)*4", "20"),
    ("2**3**2", "512"),          # ** is right-associative
    ("-3**2", "-9"),             # unary minus binds looser than **
    ("(-3)**2", "9"),
    ("-(+4) - -2", "-2"),
    ("7//2", "3"),
    ("-7 % 3", "2"),
    ("2/4", "0.5"),
    ("4/2", "2"),                # integral float prints as int
    ("2.5*4", "10"),
    ("1.5+0.25", "1.75"),
    ("0.1+0.2", "0.30000000000000004"),
    ("2**-1", "0.5"),
    ("97*103+72", "10063"),
    (" 1 + 1 ", "2"),
])
def test_calculator_values(expression, expected):
    assert calculator(expression) == expected


@pytest.mark.parametrize("expression, fragment", [
    ("__import__('os')", "unsupported function call"),
    ("a+1", "unsupported name 'a'"),
    ('"x"*3', "unsupported string literal"),
    ("(1).real", "unsupported attribute"),
    ("1 < 2", "unsupported comparison"),
    ("True + 1", "unsupported literal True"),
    ("1/0", "division by zero"),
    ("5 // 0.0", "division by zero"),
    ("3 % 0", "division by zero"),
    ("1e300 * 1e300", "too large"),
    ("1+", "invalid expression"),
    ("", "empty expression"),
])
def test_calculator_refuses(expression, fragment):
    result = calculator(expression)
    assert result.startswith("Error:") and fragment in result, result


def test_calculator_huge_power_returns_quickly():
    for expression in ("2**10**10", "9**99**99", "(10**50)**99"):
        start = time.perf_counter()
        result = calculator(expression)
        assert time.perf_counter() - start < 1.0
        assert result.startswith("Error:") and "too large" in result, result


def test_calculator_length_cap():
    result = calculator("+".join(["1"] * 150))  # 299 characters
    assert result.startswith("Error: expression too long") and "200" in result
    assert calculator("(" * 90 + "1" + ")" * 90) == "1"  # nesting within the cap is fine


# --- PythonRunner -----------------------------------------------------------------------------------

@posix_only
def test_python_prints_output():
    assert python("print(6 * 7)\nprint('done')") == "42\ndone"
    assert python("x = 1") == "(no output)"


@posix_only
def test_python_exception_reports_name():
    result = python("def f():\n    raise KeyError('missing')\nf()")
    assert result.startswith("Error: KeyError") and "Traceback" in result, result


@posix_only
def test_python_timeout_kills_process_group():
    runner = PythonRunner(timeout=1)
    start = time.perf_counter()
    result = runner("import subprocess, sys\n"  # a grandchild that does not hold the output pipes
                    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'],\n"
                    "                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
                    "while True: pass")
    assert time.perf_counter() - start < 3.0
    assert result == "Error: timed out after 1s"
    time.sleep(0.2)  # let the kernel finish delivering SIGKILL to the grandchild
    leftover = _live_group_members(runner.last_pid)
    for pid in leftover:  # clean up before failing
        os.kill(pid, 9)
    assert leftover == []  # the child and its grandchild are gone


def _live_group_members(pgid: int) -> list[int]:
    """Pids of processes in group ``pgid`` that are not zombies (a killed orphan stays a zombie where
    PID 1 does not reap, e.g. some containers). Without /proc: whether the group exists at all."""
    if not os.path.isdir("/proc/self"):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    live = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(entry))
    return live


@posix_only
def test_python_memory_limit():
    result = PythonRunner(memory_mb=256)("x = bytearray(2 * 1024**3)")
    assert result.startswith("Error:") and "MemoryError" in result, result


@posix_only
def test_python_runs_in_a_removed_temp_dir(tmp_path):
    result = python("import os\nopen('out.txt', 'w').write('hi')\nprint(os.getcwd())\nprint(os.listdir('.'))")
    workdir, listing = result.splitlines()
    assert listing == "['out.txt']"
    assert os.path.isabs(workdir) and workdir != os.getcwd()
    assert not os.path.exists(workdir)


@posix_only
def test_python_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("POSTTRAIN_SECRET", "hunter2")
    monkeypatch.setenv("PYTHONPATH", "/nonexistent")
    result = python("import os, sys\nprint(sorted(os.environ))\nprint(sys.flags.isolated)")
    keys, isolated = result.splitlines()
    assert "POSTTRAIN_SECRET" not in keys and "hunter2" not in result
    assert set(eval(keys)) <= {"PATH", "LANG", "HOME", "TMPDIR", "LC_CTYPE"}
    assert isolated == "1"


@posix_only
def test_python_stderr_and_truncation():
    result = python("import sys\nprint('out')\nprint('warn', file=sys.stderr)")
    assert result == "out\nstderr:\nwarn"
    long = PythonRunner(max_output_chars=100)("print('a' * 5000)")
    assert len(long) == 100 and long.endswith("[truncated]")


def test_python_runner_validates_arguments():
    with pytest.raises(ValueError, match="timeout"):
        PythonRunner(timeout=0)
    assert python("   ").startswith("Error:")


# --- DocumentLookup ---------------------------------------------------------------------------------

DOCS = {
    "Paris": "Paris is the capital of France and its largest city.",
    "Berlin": "Berlin is the capital of Germany.",
    "Python": "Python is a programming language created by Guido van Rossum.",
}


def test_lookup_best_match():
    lookup = DocumentLookup(DOCS)
    assert lookup("capital of Germany?") == "Berlin: Berlin is the capital of Germany."
    assert lookup("who created PYTHON").startswith("Python: Python is a programming language")
    assert lookup("capital") == "Paris: Paris is the capital of France and its largest city."  # tie -> first
    untitled = DocumentLookup(["red apples", "green pears"])
    assert untitled("pears") == "green pears"


def test_lookup_no_match_empty_and_truncation():
    lookup = DocumentLookup(DOCS, max_chars=20)
    assert lookup("quantum chromodynamics") == "No document matches 'quantum chromodynamics'"
    assert lookup("   ") == "Error: empty query"
    result = lookup("France")
    assert result == "Paris: Paris is t..." and len(result) == 20


def test_lookup_from_jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"title": t, "text": x}) for t, x in DOCS.items()) + "\n")
    lookup = DocumentLookup.from_jsonl(path)
    assert len(lookup) == 3 and lookup("Rossum").startswith("Python:")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "x"}\n')
    with pytest.raises(ValueError, match='line 1.*"text"'):
        DocumentLookup.from_jsonl(bad)


# --- describe_tool / registry -----------------------------------------------------------------------

def test_describe_tool():
    assert describe_tool(calculator) == ("calculator(expression) -- Evaluate an arithmetic expression, "
                                         "e.g. calculator(12*(3+4)) returns 84.")
    assert describe_tool(DocumentLookup(DOCS)) == ("lookup(query) -- Search the documents and return the "
                                                   "one that best matches the query words.")
    assert describe_tool(python).startswith("python(code) -- Run Python code")
    assert set(BUILTIN_TOOLS) == {"calculator", "python"} and BUILTIN_TOOLS["python"] is python
