"""PythonRunner's sandbox: hostile snippets that escaped the old runner, in both modes.

``bwrap``: bubblewrap (skipped where it is absent or cannot start here). ``none``: the fallback,
whose guarantees depend on the kernel's Landlock ABI (see posttrain/tools/python_runner.py); what
it does not cover is skipped with the reason, what holds in every mode is tested in every mode.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posttrain.tools import PythonRunner
from posttrain.tools import python_runner as runner_module
from posttrain.tools.python_runner import landlock_abi

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox tests are Linux-only")

BWRAP_WORKS = sys.platform.startswith("linux") and PythonRunner(sandbox="bwrap")._bwrap()[0] is not None
LANDLOCK = landlock_abi()
MODES = [pytest.param("bwrap", marks=pytest.mark.skipif(not BWRAP_WORKS, reason="bubblewrap is not available")),
         "none"]
RUNNER_FILE = Path(runner_module.__file__)


def need_landlock(mode: str, abi: int, what: str) -> None:
    if mode == "none" and LANDLOCK < abi:
        pytest.skip(f"without bwrap, {what} needs Landlock ABI {abi} (this kernel: {LANDLOCK}); documented")


def trainer(mode: str, code: str, timeout: float = 5.0, secret: str = "", **kwargs) -> dict:
    """Run the snippet from a separate 'trainer' process (only python_runner.py imported), whose
    environment holds ``secret``; returns the result, the call's seconds and the trainer's peak RSS."""
    script = (
        "import importlib.util, json, resource, sys, time\n"
        f"spec = importlib.util.spec_from_file_location('python_runner', {str(RUNNER_FILE)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "args = json.loads(sys.argv[1])\n"
        "runner = mod.PythonRunner(timeout=args['timeout'], sandbox=args['mode'], **args['kwargs'])\n"
        "def hwm():  # peak RSS of this process since exec, in kB (ru_maxrss carries the parent's over exec)\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"
        "rss = hwm()\n"
        "start = time.monotonic(); result = runner(args['code']); seconds = time.monotonic() - start\n"
        "print(json.dumps({'result': result, 'seconds': seconds, 'mode': runner.last_mode,\n"
        "                  'rss_before_kb': rss, 'rss_after_kb': hwm()}))\n"
    )
    env = dict(os.environ, POSTTRAIN_FAKE_SECRET=secret or "none", AWS_SECRET_ACCESS_KEY=secret or "none")
    args = json.dumps({"mode": mode, "code": code, "timeout": timeout, "kwargs": kwargs})
    done = subprocess.run([sys.executable, "-c", script, args], env=env, capture_output=True, text=True,
                          timeout=timeout + 20)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def live_pids_with(marker: str) -> list[int]:
    """Host pids (not zombies, not this process) whose command line contains ``marker``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker.encode() in cmdline and state != "Z":
            pids.append(int(entry))
    return pids


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- what escaped the old runner -----------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_parent_environ_is_not_readable(mode):
    need_landlock(mode, 1, "hiding /proc")
    secret = "fake-secret-" + secrets.token_hex(8)
    code = ("import os\n"
            "for pid in (os.getppid(), {trainer_pid}):\n"
            "    try:\n"
            "        print(open(f'/proc/{{pid}}/environ', 'rb').read())\n"
            "    except OSError as err:\n"
            "        print('refused', type(err).__name__)\n")
    out = trainer(mode, code.format(trainer_pid="os.getppid()"), secret=secret)
    assert out["mode"] == ("bwrap" if mode == "bwrap" else "landlock")
    assert secret not in out["result"], out["result"]
    # and this (pytest) process, by its host pid
    result = PythonRunner(sandbox=mode)(code.format(trainer_pid=os.getpid()))
    assert result.splitlines()[1].startswith("refused"), result


@pytest.mark.parametrize("mode", MODES)
def test_home_and_project_files_are_not_readable(mode):
    need_landlock(mode, 1, "hiding the user's files")
    token = secrets.token_hex(8)
    home_file = Path.home() / f".posttrain-sandbox-test-{token}"
    home_file.write_text(f"home-secret-{token}")
    try:
        code = ("for path in ({home!r}, {project!r}, '/etc/shadow'):\n"
                "    try:\n"
                "        print(open(path).read()[:200])\n"
                "    except OSError as err:\n"
                "        print('refused', type(err).__name__)\n").format(home=str(home_file), project=__file__)
        result = PythonRunner(sandbox=mode)(code)
    finally:
        home_file.unlink()
    assert f"home-secret-{token}" not in result and "hostile snippets" not in result, result
    assert result.count("refused") == 3, result


@pytest.mark.parametrize("mode", MODES)
def test_tmp_and_dev_shm_writes_stay_inside(mode):
    need_landlock(mode, 1, "refusing writes outside the working directory")
    token = secrets.token_hex(8)
    targets = [f"/tmp/posttrain-escape-{token}", f"/dev/shm/posttrain-escape-{token}",
               str(Path.home() / f"posttrain-escape-{token}")]
    code = ("for path in {targets!r}:\n"
            "    try:\n"
            "        open(path, 'w').write('escaped')\n"
            "        print('wrote', path)\n"
            "    except OSError as err:\n"
            "        print('refused', type(err).__name__)\n").format(targets=targets)
    try:
        result = PythonRunner(sandbox=mode)(code)
        assert [p for p in targets if os.path.exists(p)] == [], result
    finally:
        for path in targets:
            if os.path.exists(path):
                os.unlink(path)
    if mode == "bwrap":  # private tmpfs mounts: the writes succeed, inside the sandbox only
        assert result.count("wrote") == 3, result


@pytest.mark.parametrize("mode", MODES)
def test_no_tcp_to_localhost(mode):
    need_landlock(mode, 4, "refusing TCP")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        listener.settimeout(0.3)
        port = listener.getsockname()[1]
        code = ("import socket\n"
                "try:\n"
                f"    s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                "    s.sendall(b'stolen file contents'); s.close(); print('sent')\n"
                "except OSError as err:\n"
                "    print('refused', type(err).__name__)\n")
        result = PythonRunner(sandbox=mode)(code)
        with pytest.raises(socket.timeout):
            conn, _ = listener.accept()
            conn.close()
    assert result.startswith("refused"), result


@pytest.mark.skipif(not BWRAP_WORKS, reason="bubblewrap is not available")
def test_bwrap_no_udp_and_no_interfaces():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(0.3)
        port = listener.getsockname()[1]
        code = ("import socket\n"
                "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "try:\n"
                f"    s.sendto(b'stolen', ('127.0.0.1', {port})); print('sent')\n"
                "except OSError as err:\n"
                "    print('refused', type(err).__name__)\n"
                "print(sorted(name for _, name in socket.if_nameindex()))\n")
        result = PythonRunner(sandbox="bwrap")(code)
        with pytest.raises(socket.timeout):
            listener.recvfrom(100)
    assert result.splitlines()[-1] == "['lo']", result  # a loopback of its own, nothing else


@pytest.mark.parametrize("mode", MODES)
def test_setsid_daemon_does_not_outlive_the_call(mode, tmp_path):
    marker = "posttrain-daemon-" + secrets.token_hex(8)
    alive = tmp_path / "alive"
    code = ("import subprocess, sys\n"
            "subprocess.Popen([sys.executable, '-c', 'import sys, time\\n"
            "time.sleep(0.5)\\n"
            "open(sys.argv[1], \"w\").write(\"alive\")\\n"
            "time.sleep(30)', {alive!r}, {marker!r}],\n"
            "                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "print('started')\n").format(alive=str(alive), marker=marker)
    result = PythonRunner(sandbox=mode)(code)
    assert result == "started"
    time.sleep(1.0)
    survivors = live_pids_with(marker)
    kill_all(survivors)
    if mode == "bwrap":
        assert survivors == [] and not alive.exists()
    else:  # documented: without bwrap a setsid daemon survives; Landlock keeps it off the host's files
        need_landlock(mode, 1, "confining a surviving daemon")
        assert not alive.exists()


@pytest.mark.parametrize("mode", MODES)
def test_sigstop_to_the_parent_does_not_stop_it(mode):
    need_landlock(mode, 6, "refusing signals to the trainer")
    code = ("import os, signal\n"
            "for pid in (os.getppid(), 1):\n"
            "    try:\n"
            "        os.kill(pid, signal.SIGSTOP); print('sent', pid)\n"
            "    except OSError as err:\n"
            "        print('refused', type(err).__name__)\n"
            "print('done')\n")
    out = trainer(mode, code, timeout=3)  # a stopped trainer would not print: subprocess.run times out
    assert out["result"].endswith("done") and out["seconds"] < 3, out


# --- output and process limits, every mode -------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_100mb_print_is_cut_and_memory_stays_bounded(mode, stream):
    code = f"import sys\nfor _ in range(100):\n    sys.{stream}.write('a' * 1_000_000)\n"
    out = trainer(mode, code, timeout=2)
    result = out["result"]
    assert out["seconds"] < 2 + 1, out["seconds"]
    assert (out["rss_after_kb"] - out["rss_before_kb"]) < 50 * 1024, out
    assert result.endswith("[truncated]") and len(result) <= 2000, result[:200]
    assert result.startswith("Error: output limit exceeded") and "aaaa" in result


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("main", ["exits", "hangs"])
def test_200_forks_holding_the_pipe(mode, main):
    marker = "posttrain-forks-" + secrets.token_hex(8)
    code = (f"# {marker}\n"
            "import os, time\n"
            "print('before the forks')\n"
            "for _ in range(200):\n"
            "    if os.fork() == 0:\n"
            "        time.sleep(30)\n"
            "        os._exit(0)\n"
            "print('forked')\n"
            + ("while True: time.sleep(1)\n" if main == "hangs" else ""))
    runner = PythonRunner(timeout=2, sandbox=mode)
    start = time.monotonic()
    result = runner(code)
    seconds = time.monotonic() - start
    time.sleep(0.3)
    survivors = live_pids_with(marker)
    kill_all(survivors)
    assert seconds < 2 + 1, seconds
    if main == "exits":
        assert result == "before the forks\nforked", result
    else:
        assert result == "Error: timed out after 2s\nstdout:\nbefore the forks\nforked", result
    assert survivors == []


@pytest.mark.parametrize("mode", MODES)
def test_timeout_keeps_what_was_printed(mode):
    result = PythonRunner(timeout=1, sandbox=mode)("print('working')\nwhile True: pass")
    assert result == "Error: timed out after 1s\nstdout:\nworking"


# --- the bwrap filesystem ------------------------------------------------------------------------------

@pytest.mark.skipif(not BWRAP_WORKS, reason="bubblewrap is not available")
def test_bwrap_filesystem_is_read_only_and_minimal():
    code = ("import os, sys\n"
            "print(os.getpid(), sorted(p for p in os.listdir('/proc') if p.isdigit()))\n"
            "for path in ('/usr/posttrain-x', '/posttrain-x', sys.prefix + '/posttrain-x'):\n"
            "    try:\n"
            "        open(path, 'w'); print('wrote', path)\n"
            "    except OSError as err:\n"
            "        print('refused', type(err).__name__)\n"
            "print(os.path.exists('/sys/class'), os.listdir('/root'), os.listdir('/home'))\n"
            "import json, numpy\n"
            "print('imports ok')\n")
    result = PythonRunner(sandbox="bwrap")(code)
    lines = result.splitlines()
    assert lines[0] == "2 ['1', '2']", result  # bwrap as PID 1, the snippet, nothing of the host
    assert lines[1:4] == ["refused OSError"] * 3 or all(line.startswith("refused") for line in lines[1:4]), result
    under_root = sorted({d.split("/")[2] for d in runner_module._python_dirs() if d.startswith("/root/")})
    assert lines[4] == f"False {under_root} []" and lines[5] == "imports ok", result  # only Python's own dirs


def test_bwrap_command_line():
    cmd = runner_module.bwrap_command("/usr/bin/bwrap", ["/usr/bin/python3", "-c", "pass"], "/tmp/w")
    joined = " ".join(cmd)
    for option in ("--unshare-all", "--die-with-parent", "--new-session", "--cap-drop ALL", "--clearenv",
                   "--proc /proc", "--tmpfs /tmp", "--tmpfs /dev/shm", "--tmpfs /root", "--tmpfs /home",
                   "--remount-ro /", "--disable-userns"):
        assert option in joined
    assert "--share-net" not in cmd and "--bind" not in cmd  # read-only binds only
    assert cmd[-3:] == ["/usr/bin/python3", "-c", "pass"]


# --- without bwrap: the warning, and sandbox="bwrap" refusing to fall back ----------------------------

def test_missing_bwrap_warns_once_loudly(monkeypatch):
    monkeypatch.setattr(runner_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(runner_module, "_warned", set())
    runner = PythonRunner()
    with pytest.warns(RuntimeWarning, match=r"WITHOUT a real sandbox.*apt-get install bubblewrap"):
        assert runner("print(1)") == "1"
    assert runner.last_mode == ("landlock" if LANDLOCK else "none")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runner("print(2)") == "2"  # once per process
    strict = PythonRunner(sandbox="bwrap")
    assert strict("print(3)").startswith("Error: the bubblewrap sandbox is not available (not installed)")
    with pytest.raises(ValueError, match="sandbox"):
        PythonRunner(sandbox="docker")


def test_fallback_without_landlock_keeps_the_limits(monkeypatch):
    monkeypatch.setattr(runner_module, "landlock_abi", lambda: 0)  # an old kernel, or macOS
    runner = PythonRunner(timeout=1, sandbox="none")
    assert runner("import sys\nprint(sys.argv)") == "['-c']" and runner.last_mode == "none"
    assert runner("print('x')\nwhile True: pass") == "Error: timed out after 1s\nstdout:\nx"
    start = time.monotonic()
    result = runner("while True: print('a' * 1000)")
    assert time.monotonic() - start < 2 and result.endswith("[truncated]")
