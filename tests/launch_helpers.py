"""Launching the distributed tests' scripts: ``accelerate launch`` of two CPU processes (gloo), in a subprocess with
a timeout, so a hung collective fails its test instead of hanging the suite."""

import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FSDP2_CONFIG = os.path.join(ROOT, "examples", "accelerate", "fsdp2.yaml")
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def free_port() -> int:
    with socket.socket() as sock:  # a fixed port can still be held by the previous run (TIME_WAIT)
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_command(*args: str, config: str | None = None, processes: int = 2) -> list[str]:
    """``accelerate launch`` of ``args`` (a script and its arguments, or ``-m module ...``) on ``processes`` CPU
    processes: with ``config`` (e.g. the FSDP2 one) as given, else plain data parallel."""
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    # --multi_gpu selects the torchrun launcher; with no GPU, accelerate runs the processes on CPU with gloo.
    where = ["--config_file", config] if config else ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [accelerate, "launch", *where, "--num_processes", str(processes), "--num_machines", "1",
            "--main_process_port", str(free_port()), *args]


def launch_two(*args: str, config: str | None = None, timeout: int = 300, cwd: str | None = None):
    """Run the launch; retries the rare gloo start-up abort; returns the finished process (asserted rc 0)."""
    # torch 2.13's gloo process group now and then aborts both ranks at start-up ("terminate called
    # without an active exception", SIGABRT, before any training step); that is not what these tests
    # check, so a launch that dies that way is retried, at most twice.
    for _ in range(3):
        done = subprocess.run(accelerate_command(*args, config=config), env=ENV, capture_output=True, text=True,
                              timeout=timeout, cwd=cwd)
        if done.returncode == 0 or "terminate called without an active exception" not in done.stderr:
            break
    assert done.returncode == 0, done.stderr[-3000:]
    return done
