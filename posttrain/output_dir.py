"""One run writes into an ``output_dir`` at a time: :func:`output_dir_lock` takes ``.posttrain.lock`` (created
exclusively, holding the writer's pid, host and the pid's start time; a dead holder's lock is taken over with a
warning), after a write probe (:func:`prepare_output_dir`), and clears what a killed run left: an interrupted
final save is finished, staging directories removed, checkpoints beyond ``save_total_limit`` trimmed."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import time
import uuid

from transformers.trainer_utils import get_last_checkpoint, rotate_checkpoints

from .checkpoint import (FINAL_STAGING, STAGING_DIR, OutputDirError, _read_json, disk_errors,
                         finish_interrupted_save)

logger = logging.getLogger(__name__)

LOCK_FILE = ".posttrain.lock"  # {"pid", "host", "pid_start", "started", "command", "token"}
PROBE_FILE = ".posttrain-write-probe"


def prepare_output_dir(output_dir: str) -> None:
    """Create ``output_dir`` and write, fsync and remove a small probe file in it, so a read-only, unwritable or full
    disk fails before training with an :class:`OutputDirError` that names the directory."""
    with disk_errors(output_dir, "a probe file, before training"):
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, f"{PROBE_FILE}-{os.getpid()}")
        try:
            with open(probe, "wb") as fh:
                fh.write(b"\0" * 4096)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            with contextlib.suppress(OSError):
                os.remove(probe)


_HELD: dict[str, int] = {}  # this process's output_dir locks (real path -> nesting depth)


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux), to tell a live holder from a new process that reuses its pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _holder_alive(holder: dict) -> bool | None:
    """True/False for a holder on this host; None when it runs on another host (cannot tell)."""
    if holder.get("host") != socket.gethostname():
        return None
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False  # ours, left by an earlier run in this process that did not release it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = _start_time(pid)
    return not (holder.get("pid_start") and started and holder["pid_start"] != started)


def _lock_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "pid_start": _start_time(os.getpid()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)[:300],
            "token": uuid.uuid4().hex}


def _create_lock(path: str, record: dict) -> bool:
    """Create the lock file holding ``record`` (complete when it appears: written aside, then linked, which fails
    when the lock exists; O_EXCL where hard links are not supported). False when it exists."""
    tmp = f"{path}.{record['token']}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(record, fh)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def _acquire(output_dir: str, overwrite: bool) -> dict:
    path, record = os.path.join(output_dir, LOCK_FILE), _lock_record()
    for _ in range(20):
        if _create_lock(path, record):
            return record
        holder = _read_json(path)
        if holder is None:  # being written (O_EXCL fallback) or torn: stale only when old
            with contextlib.suppress(OSError):
                if time.time() - os.path.getmtime(path) < 30 and not overwrite:
                    time.sleep(0.2)
                    continue
            holder = {}
        alive = _holder_alive(holder) if holder else False
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
        if alive is not False and not overwrite:
            raise OutputDirError(
                f"{output_dir} is in use by another posttrain run ({who}; lock file {path}). Use another "
                "--output_dir, wait for that run to end, or set overwrite_output_dir to take the directory over"
                + (" (or, if that run is dead, delete the lock file)." if alive is None else "."))
        if holder.get("pid") != os.getpid():
            logger.warning("%s: taking over the lock of %s (%s).", output_dir, who,
                           "overwrite_output_dir is set" if alive is not False else "that process is gone")
        # take the stale lock aside, and make sure it is the one judged stale (another run may have taken it over)
        aside = f"{path}.stale-{record['token']}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            continue
        moved = _read_json(aside) or {}
        if holder and moved.get("token") != holder.get("token"):
            with contextlib.suppress(OSError):
                os.link(aside, path)  # not the stale one: give it back
            with contextlib.suppress(OSError):
                os.remove(aside)
            continue
        with contextlib.suppress(OSError):
            os.remove(aside)
    raise OutputDirError(f"Could not take the lock {path}: other runs keep taking it.")


def _release(output_dir: str, record: dict) -> None:
    path = os.path.join(output_dir, LOCK_FILE)
    if (_read_json(path) or {}).get("token") == record["token"]:  # still ours (not taken over)
        with contextlib.suppress(OSError):
            os.remove(path)


def clean_extra_checkpoints(output_dir: str, save_total_limit: int | None) -> None:
    """Remove checkpoints beyond ``save_total_limit`` (a run killed between a checkpoint's rename and the rotation
    leaves one too many); the best one, as the newest checkpoint's trainer state names it, is kept."""
    if not save_total_limit or save_total_limit <= 0 or not os.path.isdir(output_dir):
        return
    last = get_last_checkpoint(output_dir)
    if last is None:
        return
    best = (_read_json(os.path.join(last, "trainer_state.json")) or {}).get("best_model_checkpoint")
    if best and not os.path.isabs(best):
        best = os.path.join(output_dir, os.path.basename(best))
    rotate_checkpoints(output_dir=output_dir, save_total_limit=save_total_limit,
                       best_model_checkpoint=best if best and os.path.isdir(best) else None, use_mtime=False)


@contextlib.contextmanager
def output_dir_lock(output_dir: str, overwrite: bool = False, save_total_limit: int | None = None,
                    enabled: bool = True):
    """Hold ``output_dir`` for this run: write probe (:func:`prepare_output_dir`), then ``.posttrain.lock``; a
    second run into the same directory fails with :class:`OutputDirError` unless ``overwrite`` (the lock is taken
    over, with a warning); a lock whose process is gone (same host) is taken over with a warning. Then the debris
    of a killed run is cleared (an interrupted final save finished, staging areas removed, checkpoints beyond
    ``save_total_limit`` removed). Released on exit, exceptions included. Re-entrant within a process (nested
    holds of the same directory are free). ``enabled=False`` (processes other than the main one): nothing."""
    if not enabled:
        yield
        return
    key = os.path.realpath(output_dir)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    prepare_output_dir(output_dir)
    with disk_errors(output_dir, "the lock file"):
        record = _acquire(output_dir, overwrite)
    _HELD[key] = 1
    try:
        with disk_errors(output_dir, "clearing a killed run's debris"):
            finish_interrupted_save(output_dir)
            shutil.rmtree(os.path.join(output_dir, STAGING_DIR), ignore_errors=True)
            shutil.rmtree(os.path.join(output_dir, FINAL_STAGING), ignore_errors=True)
            clean_extra_checkpoints(output_dir, save_total_limit)
        yield
    finally:
        del _HELD[key]
        _release(output_dir, record)
