"""A tool that runs a Python snippet in a sandboxed, resource-limited process and returns its output.

``python("print(2**10)") -> "1024"``. POSIX only (Linux, macOS): on other platforms the tool runs
nothing and returns an "Error: ... needs a POSIX system" message. The snippet is model-written code
run as the trainer's user, so it is treated as hostile.

Two modes, chosen per call (``PythonRunner(sandbox="auto")``, the default):

**bubblewrap** (``bwrap`` on the PATH, Linux; ``apt-get install bubblewrap``). The snippet runs as
``bwrap <options> env -i PATH=/usr/bin:/bin LANG=C.UTF-8 HOME=W TMPDIR=W python -I -B -u -c CODE``
with (see :func:`bwrap_command`):

- new user, PID, network, IPC, UTS (and cgroup) namespaces (``--unshare-all``, no ``--share-net``):
  no network at all (loopback included); a fresh ``--proc /proc`` that shows only the sandbox's own
  processes, so the trainer's ``/proc/<pid>/environ`` and the user's other processes are out of
  sight and out of reach of signals; nested user namespaces disabled (``--disable-userns``);
- no capabilities (``--cap-drop ALL``), a new terminal session (``--new-session``), and the
  environment built from scratch (``--clearenv`` and ``env -i``);
- a filesystem of read-only binds of only what Python needs -- ``/usr`` (``/bin``, ``/lib``, ...),
  a few files of ``/etc`` (``ld.so.cache``, ``localtime``, ``alternatives``, ``ssl``, ...), the
  interpreter's prefixes (``sys.base_prefix``, the virtualenv) -- then ``--remount-ro /``: the rest
  of the machine (``/root``, ``/home``, the project, ``/var``, ``/sys``) does not exist there;
  ``/tmp`` (the working directory, also ``HOME``/``TMPDIR``), ``/dev/shm``, ``/root`` and ``/home``
  are fresh size-limited tmpfs mounts that vanish with the call; ``/dev`` is a minimal private one;
- ``--die-with-parent`` and bwrap as PID 1 of the namespace: when the snippet's main process exits
  (or is killed), every process it started -- ``setsid`` daemons and fork bombs included -- is
  killed by the kernel with the namespace.

**without bwrap** (absent, not working, or ``sandbox="none"``) -- a warning says so once, loudly.
The snippet runs as ``python -I -B -u -c BOOTSTRAP CODE`` in its own session and process group, in
a fresh temporary directory (deleted afterwards), with ``PATH``/``LANG``/``HOME``/``TMPDIR`` only.
On Linux with Landlock (kernel 5.13+; network from 6.7, signals from 6.12) the bootstrap confines
the process and everything it starts before running ``CODE``: files can be read only under the
system and interpreter directories and written only in the temporary directory (so the trainer's
``/proc/<pid>/environ``, ``$HOME`` and ``/tmp`` are refused); TCP connect/bind is refused; signals
to processes outside the sandbox are refused. NOT covered there: UDP and other non-TCP sockets
(the snippet still has the host's network), process visibility (``ps``), and a daemon that left the
process group (``setsid``) outlives the call (confined as above, and by RLIMIT_CPU). Without
Landlock (older kernels, macOS) only the limits below hold: the code can read and write whatever
the user can, use the network and signal the user's processes -- do not run untrusted code there.

In both modes:

- stdin is ``/dev/null``; the interpreter runs isolated (``-I``: no user site-packages,
  ``PYTHON*`` variables ignored), unbuffered (``-u``: output printed before a timeout is kept),
  writing no ``.pyc`` files (``-B``);
- resource limits (``setrlimit``, never above the parent's own hard limits): address space
  ``memory_mb`` (RLIMIT_AS), CPU time ``ceil(timeout) + 1`` s (RLIMIT_CPU; SIGKILL a second later),
  size of any file written 10 MB (RLIMIT_FSIZE), 64 open files (RLIMIT_NOFILE); macOS does not
  enforce RLIMIT_AS, so there the memory limit is not effective;
- output is read with a hard cap (:attr:`PythonRunner.read_cap` bytes per stream): past it the
  process group is killed and reading stops, so the trainer's memory stays bounded;
- the wall-clock ``timeout`` holds even when descendants keep the output pipes open: at the
  deadline, or as soon as the snippet's main process exits, its process group (with bwrap: the
  whole PID namespace) is killed with SIGKILL and the pipes are drained without waiting for EOF;
- the text returned to the model is capped at ``max_output_chars``.
"""

from __future__ import annotations

import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings

try:
    import resource  # POSIX only; imported here because importing in a forked child can deadlock
except ImportError:  # pragma: no cover - Windows
    resource = None

FILE_SIZE_LIMIT = 10 * 1024 * 1024
OPEN_FILES_LIMIT = 64
TMPFS_SIZE = 64 * 1024 * 1024  # bwrap: /tmp (the working directory); /dev/shm, /root, /home get less
READ_CAP_MIN = 64 * 1024  # bytes read per stream at least, whatever max_output_chars is
_TRUNCATED = "\n[truncated]"
_PATH = "/usr/bin:/bin"
_SANDBOX_MODES = ("auto", "bwrap", "none")

# What the fresh root of the bwrap sandbox gets from the host, read-only (only those that exist).
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_ENTRIES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "alternatives",
                "ssl", "ca-certificates", "ca-certificates.conf", "mime.types", "nsswitch.conf")

_NO_SANDBOX_WARNING = (
    "posttrain PythonRunner: bubblewrap (bwrap) is {why}, so model-written code runs WITHOUT a real "
    "sandbox, as this user ({extent}). Install it (Debian/Ubuntu: `apt-get install bubblewrap`) to "
    "run it with no network, a read-only view of only the system and Python files, and no view of "
    "other processes.")


# --- the bwrap mode ----------------------------------------------------------------------------------

def _python_dirs() -> list[str]:
    """The interpreter's own directories (prefixes, the executable's), outermost only."""
    dirs = {os.path.realpath(p) for p in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix)}
    dirs |= {os.path.abspath(p) for p in (sys.prefix, sys.exec_prefix)}  # the venv as named (symlinks)
    dirs.add(os.path.dirname(os.path.realpath(sys.executable)))
    dirs.add(os.path.dirname(os.path.abspath(sys.executable)))
    dirs = sorted(d for d in dirs if d and d != "/" and os.path.isdir(d))
    outer = []
    for d in dirs:  # sorted: a parent comes before its children
        if not any(d == o or d.startswith(o.rstrip("/") + "/") for o in outer):
            outer.append(d)
    return outer


def bwrap_command(bwrap: str, argv: list[str], workdir: str, *, userns: bool = True) -> list[str]:
    """The bubblewrap command line that runs ``argv`` (``argv[0]`` an absolute path) in the sandbox.

    ``workdir`` is the working directory inside it (also HOME and TMPDIR), on the private ``/tmp``.
    ``userns=False`` leaves out ``--unshare-user --disable-userns`` (for hosts where bwrap runs
    privileged without user namespaces).
    """
    cmd = [bwrap, "--unshare-all"]
    if userns:
        cmd += ["--unshare-user", "--disable-userns"]
    cmd += ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv",
            "--setenv", "PATH", _PATH, "--setenv", "LANG", "C.UTF-8",
            "--setenv", "HOME", workdir, "--setenv", "TMPDIR", workdir]
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            cmd += ["--ro-bind", path, path]
    for name in _ETC_ENTRIES:
        path = os.path.join("/etc", name)
        if os.path.lexists(path):
            cmd += ["--ro-bind-try", path, path]
    cmd += ["--proc", "/proc", "--dev", "/dev",
            "--size", str(TMPFS_SIZE), "--tmpfs", "/tmp",
            "--size", str(TMPFS_SIZE // 4), "--tmpfs", "/dev/shm",
            "--size", str(1024 * 1024), "--tmpfs", "/root",
            "--size", str(1024 * 1024), "--tmpfs", "/home"]
    for path in _python_dirs():  # after the tmpfs mounts: a pyenv under /root is bound on top
        cmd += ["--ro-bind", path, path]
    cmd += ["--dir", workdir, "--chdir", workdir, "--remount-ro", "/"]
    env = next((p for p in ("/usr/bin/env", "/bin/env") if os.path.exists(p)), None)
    if env is not None:  # bwrap always sets PWD; env -i drops it
        argv = [env, "-i", f"PATH={_PATH}", "LANG=C.UTF-8", f"HOME={workdir}", f"TMPDIR={workdir}", *argv]
    return cmd + ["--", *argv]


_bwrap_probe: dict[str, tuple[bool | None, str]] = {}  # bwrap path -> (userns or None if broken, error)
_warned: set[str] = set()


def _probe_bwrap(bwrap: str) -> tuple[bool | None, str]:
    """Whether this bwrap can start the sandbox (cached): ``(userns, "")`` or ``(None, its error)``."""
    if bwrap not in _bwrap_probe:
        error = ""
        for userns in (True, False):
            cmd = bwrap_command(bwrap, [os.path.abspath(sys.executable), "-I", "-c", "pass"],
                                "/tmp/probe", userns=userns)
            try:
                done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, timeout=30)
            except (OSError, subprocess.SubprocessError) as err:
                error = str(err)
                continue
            if done.returncode == 0:
                _bwrap_probe[bwrap] = (userns, "")
                break
            error = done.stderr.decode("utf-8", "replace").strip()[-500:] or f"exit status {done.returncode}"
        else:
            _bwrap_probe[bwrap] = (None, error)
    return _bwrap_probe[bwrap]


# --- the fallback mode: Landlock -----------------------------------------------------------------------

def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where there is none (not Linux, too old, disabled)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        abi = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # LANDLOCK_CREATE_RULESET_VERSION
    except (OSError, AttributeError):
        return 0
    return max(int(abi), 0)


# Runs in the child (python -I -B -u -c _BOOTSTRAP CODE on|off READ... -- WRITE...) before the snippet.
# Fails closed: if Landlock is there but cannot be applied, the snippet is not run.
_BOOTSTRAP = r'''
import ctypes, os, sys
def _landlock(read, write):
    libc = ctypes.CDLL(None, use_errno=True)
    def check(r, what):
        if r < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"landlock {what}: {os.strerror(e)}")
        return r
    abi = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return
    fs = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
    file_only = 1 | 2 | 4 | (1 << 14) | (1 << 15)  # execute, write, read, truncate, ioctl_dev
    class Ruleset(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]
    class Beneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]
    # net: bind + connect TCP; scoped: abstract unix sockets + signals
    attr = Ruleset(fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = check(libc.syscall(444, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)), "create_ruleset")
    for paths, access in ((read, 1 | 4 | 8), (write, fs)):  # read: execute, read_file, read_dir
        for path in paths:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            allowed = access if os.path.isdir(path) else access & file_only
            rule = Beneath(allowed & fs, fd)
            check(libc.syscall(445, ruleset, 1, ctypes.byref(rule), ctypes.c_uint32(0)), f"add_rule {path}")
            os.close(fd)
    check(libc.prctl(38, 1, 0, 0, 0), "no_new_privs")
    check(libc.syscall(446, ruleset, ctypes.c_uint32(0)), "restrict_self")
    os.close(ruleset)
_code, _on, _args = sys.argv[1], sys.argv[2] == "on", sys.argv[3:]
_cut = _args.index("--")
if _on:
    _landlock(_args[:_cut], _args[_cut + 1:])
del ctypes, os, _landlock, _on, _args, _cut
sys.argv = ["-c"]
_globals = {"__name__": "__main__", "__builtins__": __builtins__}
try:
    exec(compile(_code, "<string>", "exec"), _globals)
except SystemExit:
    raise
except BaseException as _err:
    _err.__traceback__ = _err.__traceback__.tb_next  # without this bootstrap's frame
    sys.excepthook(type(_err), _err, _err.__traceback__)
    sys.exit(1)
'''


def _landlock_paths(workdir: str) -> tuple[list[str], list[str]]:
    read = [p for p in _SYSTEM_DIRS if os.path.exists(p)]
    read += [os.path.join("/etc", n) for n in _ETC_ENTRIES if os.path.exists(os.path.join("/etc", n))]
    read += _python_dirs() + ["/dev/urandom", "/dev/random"]
    return read, [workdir, "/dev/null", "/dev/zero", "/dev/full"]


# --- the runner ----------------------------------------------------------------------------------------

def _limits(memory_mb: int, cpu_seconds: int):
    """A ``preexec_fn`` that applies the resource limits in the child before it execs."""

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
    """Run Python code in a sandboxed subprocess with time and resource limits; returns its output.

    Args:
        timeout: wall-clock seconds before the process group is killed (``"Error: timed out ..."``).
        memory_mb: address-space limit of the child in MiB; allocations past it raise MemoryError.
        max_output_chars: the returned text is cut to this many characters, ending "[truncated]".
        sandbox: ``"auto"`` (bubblewrap when ``bwrap`` works, else the fallback with a warning),
            ``"bwrap"`` (bubblewrap or an error text, never the fallback) or ``"none"`` (the fallback).
    """

    __name__ = "python"

    def __init__(self, timeout: float = 5.0, memory_mb: int = 256, max_output_chars: int = 2000,
                 sandbox: str = "auto"):
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if memory_mb < 32:
            raise ValueError(f"memory_mb must be at least 32 (the interpreter itself needs it), got {memory_mb!r}")
        if max_output_chars < 20:
            raise ValueError(f"max_output_chars must be at least 20, got {max_output_chars!r}")
        if sandbox not in _SANDBOX_MODES:
            raise ValueError(f"sandbox must be one of {_SANDBOX_MODES}, got {sandbox!r}")
        self.timeout = float(timeout)
        self.memory_mb = int(memory_mb)
        self.max_output_chars = int(max_output_chars)
        self.sandbox = sandbox
        self.read_cap = max(READ_CAP_MIN, 8 * self.max_output_chars)  # bytes read per stream, then kill
        self.last_pid: int | None = None  # pid of the most recent child (its process group id too)
        self.last_mode: str | None = None  # "bwrap", "landlock" or "none": how the last call ran

    def __repr__(self) -> str:
        return (f"PythonRunner(timeout={self.timeout}, memory_mb={self.memory_mb}, "
                f"max_output_chars={self.max_output_chars}, sandbox={self.sandbox!r})")

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
        if "\0" in code:
            return "Error: the code contains a NUL character"
        bwrap, why = self._bwrap()
        if bwrap is None and self.sandbox == "bwrap":
            return f"Error: the bubblewrap sandbox is not available ({why}), so the code was not run"
        with tempfile.TemporaryDirectory(prefix="posttrain-python-") as workdir:
            if bwrap is not None:
                self.last_mode = "bwrap"
                inner = os.path.join("/tmp", os.path.basename(workdir))  # on the sandbox's own tmpfs
                argv = bwrap_command(bwrap, [os.path.abspath(sys.executable), "-I", "-B", "-u", "-c", code],
                                     inner, userns=_bwrap_probe[bwrap][0])
                cwd, env = "/", {"PATH": _PATH, "LANG": "C.UTF-8"}
            else:
                landlock = landlock_abi() > 0
                self.last_mode = "landlock" if landlock else "none"
                self._warn_once(why, landlock)
                read, write = _landlock_paths(workdir) if landlock else ([], [])
                argv = [sys.executable, "-I", "-B", "-u", "-c", _BOOTSTRAP, code, "on" if landlock else "off",
                        *read, "--", *write]
                cwd, env = workdir, {"PATH": _PATH, "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
            try:
                proc = subprocess.Popen(
                    argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, start_new_session=True,
                    preexec_fn=_limits(self.memory_mb, math.ceil(self.timeout) + 1),
                )
            except (OSError, ValueError, subprocess.SubprocessError) as err:
                return f"Error: could not start Python ({err})"
            self.last_pid = proc.pid
            try:
                out, err, status = self._collect(proc)
            finally:
                self._kill_group(proc.pid)  # also ends stragglers the snippet left in its group
                for pipe in (proc.stdout, proc.stderr):
                    pipe.close()
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        returncode = proc.returncode
        if bwrap is not None and returncode > 128 and (returncode - 128) in signal.valid_signals():
            returncode = -(returncode - 128)  # bwrap reports a child killed by signal N as 128 + N
        return self._format(returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), status)

    def _bwrap(self) -> tuple[str | None, str]:
        """The bwrap to use, or None and why not."""
        if self.sandbox == "none":
            return None, "switched off (sandbox='none')"
        if not sys.platform.startswith("linux"):
            return None, "Linux-only"
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            return None, "not installed"
        userns, error = _probe_bwrap(bwrap)
        if userns is None:
            return None, f"installed but fails here: {error}"
        return bwrap, ""

    @staticmethod
    def _warn_once(why: str, landlock: bool) -> None:
        if why in _warned or why.startswith("switched off"):
            return
        _warned.add(why)
        extent = ("Landlock confines file access, TCP and signals, but other network use and "
                  "processes that outlive the call remain possible" if landlock else
                  "it can read and write the user's files, use the network and signal the user's processes")
        warnings.warn(_NO_SANDBOX_WARNING.format(why=why, extent=extent), RuntimeWarning, stacklevel=3)

    def _collect(self, proc: subprocess.Popen) -> tuple[bytes, bytes, str]:
        """Read stdout/stderr until EOF, the deadline, the read cap or the main process's exit.

        Returns ``(stdout, stderr, status)`` with status ``"exited"``, ``"timeout"`` or ``"overflow"``.
        Never waits for EOF after the main process is gone: descendants may hold the pipes open.
        """
        deadline = time.monotonic() + self.timeout
        bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        selector = selectors.DefaultSelector()
        for fd in bufs:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        pidfd = None
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(proc.pid)
                selector.register(pidfd, selectors.EVENT_READ)
            except OSError:
                pidfd = None
        status, open_fds = "exited", len(bufs)

        def read(fd: int) -> bool:
            """Read a chunk from ``fd``; False when there was none (for now), at EOF or at the cap."""
            nonlocal status, open_fds
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return False
            except OSError:
                chunk = b""
            if not chunk:
                selector.unregister(fd)
                open_fds -= 1
                return False
            buf, room = bufs[fd], self.read_cap - len(bufs[fd])
            buf += chunk[:room]
            if len(chunk) > room:
                status = "overflow"
                return False
            return True

        try:
            while open_fds:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    status = "timeout"
                    break
                events = selector.select(remaining if pidfd is not None else min(remaining, 0.05))
                exited = False
                for key, _ in events:
                    if key.fd == pidfd:
                        exited = True
                    else:
                        read(key.fd)
                if status == "overflow":
                    break
                if exited or proc.poll() is not None:  # the main process is gone: end the rest, drain
                    self._kill_group(proc.pid)
                    for fd in list(bufs):  # what is already in the pipes; no waiting for EOF
                        while status != "overflow" and fd in selector.get_map() and read(fd):
                            pass
                    break
            if status != "exited":
                self._kill_group(proc.pid)
        finally:
            selector.close()
            if pidfd is not None:
                os.close(pidfd)
        return bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), status

    @staticmethod
    def _kill_group(pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _format(self, returncode: int, out: str, err: str, status: str = "exited") -> str:
        truncated = status == "overflow"
        if status == "timeout":
            head = f"Error: timed out after {self.timeout:g}s"
        elif status == "overflow":
            head = f"Error: output limit exceeded (over {self.read_cap} bytes), the process was stopped"
        elif returncode == -signal.SIGXCPU:
            head = f"Error: CPU time limit exceeded ({math.ceil(self.timeout) + 1}s)"
        elif returncode < 0:
            head = f"Error: process killed by signal {signal.Signals(-returncode).name}"
        elif returncode > 0:
            last = _last_line(err)
            head = f"Error: {last}" if last else f"Error: exited with status {returncode}"
        else:
            head = None
        if head is not None:
            parts = [head, f"stdout:\n{out}" if out else "", f"stderr:\n{err}" if err else ""]
        else:
            parts = [out, f"stderr:\n{err}" if err else ""]
        text = "\n".join(p.rstrip("\n") for p in parts if p) or "(no output)"
        if truncated or len(text) > self.max_output_chars:
            text = text[: self.max_output_chars - len(_TRUNCATED)].rstrip("\n") + _TRUNCATED
        return text


python = PythonRunner()
