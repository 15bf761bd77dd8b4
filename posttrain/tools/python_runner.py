"""A tool that runs a Python snippet in a separate, resource-limited process and returns its output.

``python("print(2**10)") -> "1024"``. Each call starts ``[sys.executable, "-I", "-c", code]`` in a
fresh temporary directory that is deleted afterwards. POSIX only (Linux, macOS): on other platforms
the tool runs nothing and returns an "Error: ... needs a POSIX system" message.

What IS isolated / limited:

- the interpreter runs in isolated mode (``-I``): no user site-packages, ``PYTHON*`` environment
  variables ignored, the working directory not on ``sys.path``;
- the environment is scrubbed: only ``PATH=/usr/bin:/bin``, ``LANG=C.UTF-8`` and ``HOME``/``TMPDIR``
  (both the temporary directory) are set -- no variable of the parent (tokens, keys) is passed on;
- the working directory is a fresh temporary directory, removed with its contents after the run;
- stdin is ``/dev/null``;
- resource limits (``setrlimit``, never above the parent's own hard limits): address space
  ``memory_mb`` (RLIMIT_AS), CPU time ``ceil(timeout) + 1`` s (RLIMIT_CPU; SIGKILL a second later),
  size of any file written 10 MB (RLIMIT_FSIZE), 64 open files (RLIMIT_NOFILE); macOS does not
  enforce RLIMIT_AS, so there the memory limit is not effective;
- wall-clock time ``timeout`` s: the child runs in its own session/process group, and the whole
  group (including any subprocesses it started) is killed with SIGKILL on timeout, and also once
  the snippet has exited (no leftover background processes in that group);
- output returned to the model is capped at ``max_output_chars``.

What is NOT isolated (this is not a security sandbox -- run untrusted code in a container/VM):

- network access is unrestricted;
- the code can read any file the user running the trainer can read;
- the code can write, with absolute paths, anywhere the user can write (only the temp dir is cleaned);
- it runs as the same user, sees other processes (``ps``, ``/proc``) and can signal the user's own
  processes; background processes that escape the process group (a new ``setsid``) are not killed;
- no limit on the number of processes/threads it spawns (RLIMIT_NPROC is per user, so it is not set).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile

try:
    import resource  # POSIX only; imported here because importing in a forked child can deadlock
except ImportError:  # pragma: no cover - Windows
    resource = None

FILE_SIZE_LIMIT = 10 * 1024 * 1024
OPEN_FILES_LIMIT = 64
_TRUNCATED = "\n[truncated]"


def _limits(memory_mb: int, cpu_seconds: int):
    """A ``preexec_fn`` that applies the resource limits in the child before it execs Python."""

    def apply() -> None:
        for name, value in (("RLIMIT_AS", memory_mb * 1024 * 1024), ("RLIMIT_CPU", cpu_seconds),
                            ("RLIMIT_FSIZE", FILE_SIZE_LIMIT), ("RLIMIT_NOFILE", OPEN_FILES_LIMIT)):
            limit = getattr(resource, name, None)
            if limit is None:
                continue
            _, hard_now = resource.getrlimit(limit)
            hard = value + 1 if name == "RLIMIT_CPU" else value  # CPU: SIGXCPU at soft, SIGKILL at hard
            if hard_now != resource.RLIM_INFINITY:
                value, hard = min(value, hard_now), min(hard, hard_now)
            resource.setrlimit(limit, (value, hard))

    return apply


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


class PythonRunner:
    """Run Python code in a subprocess with a time limit and resource limits; returns its output.

    Args:
        timeout: wall-clock seconds before the process group is killed (``"Error: timed out ..."``).
        memory_mb: address-space limit of the child in MiB; allocations past it raise MemoryError.
        max_output_chars: the returned text is cut to this many characters, ending "[truncated]".
    """

    __name__ = "python"

    def __init__(self, timeout: float = 5.0, memory_mb: int = 256, max_output_chars: int = 2000):
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if memory_mb < 32:
            raise ValueError(f"memory_mb must be at least 32 (the interpreter itself needs it), got {memory_mb!r}")
        if max_output_chars < 20:
            raise ValueError(f"max_output_chars must be at least 20, got {max_output_chars!r}")
        self.timeout = float(timeout)
        self.memory_mb = int(memory_mb)
        self.max_output_chars = int(max_output_chars)
        self.last_pid: int | None = None  # pid of the most recent child (its process group id too)

    def __repr__(self) -> str:
        return (f"PythonRunner(timeout={self.timeout}, memory_mb={self.memory_mb}, "
                f"max_output_chars={self.max_output_chars})")

    def __call__(self, code: str) -> str:
        """Run Python code in a fresh process and return what it printed (stdout, then stderr).

        Use print() to see values. Each call starts from scratch: no variables survive between calls.
        """
        if os.name != "posix":
            return (f"Error: the python tool needs a POSIX system (Linux, macOS) for its process limits; "
                    f"this platform is {os.name!r}, so the code was not run")
        if not isinstance(code, str):
            return f"Error: expected the code as a string, got {type(code).__name__}"
        if not code.strip():
            return "Error: no code given"
        with tempfile.TemporaryDirectory(prefix="posttrain-python-") as workdir:
            env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-c", code], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                    preexec_fn=_limits(self.memory_mb, math.ceil(self.timeout) + 1),
                )
            except (OSError, ValueError, subprocess.SubprocessError) as err:
                return f"Error: could not start Python ({err})"
            self.last_pid = proc.pid
            try:
                out, err = proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self._kill_group(proc.pid)
                proc.kill()
                try:
                    proc.communicate(timeout=2)
                except subprocess.TimeoutExpired:  # a descendant that left the group holds the pipes
                    for pipe in (proc.stdout, proc.stderr):
                        pipe.close()
                return f"Error: timed out after {self.timeout:g}s"
            finally:
                self._kill_group(proc.pid)  # also ends stragglers the snippet left in its group
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return self._format(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    @staticmethod
    def _kill_group(pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _format(self, returncode: int, out: str, err: str) -> str:
        if returncode != 0:
            if returncode == -signal.SIGXCPU:
                head = f"Error: CPU time limit exceeded ({math.ceil(self.timeout) + 1}s)"
            elif returncode < 0:
                head = f"Error: process killed by signal {signal.Signals(-returncode).name}"
            else:
                last = _last_line(err)
                head = f"Error: {last}" if last else f"Error: exited with status {returncode}"
            parts = [head, f"stdout:\n{out}" if out else "", f"stderr:\n{err}" if err else ""]
        else:
            parts = [out, f"stderr:\n{err}" if err else ""]
        text = "\n".join(p.rstrip("\n") for p in parts if p) or "(no output)"
        if len(text) > self.max_output_chars:
            text = text[: self.max_output_chars - len(_TRUNCATED)] + _TRUNCATED
        return text


python = PythonRunner()
