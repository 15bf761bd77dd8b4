"""Checkpoints, for every trainer: written atomically, rotated, carrying RNG state, resumed exactly.

A checkpoint is written by every process into ``<output_dir>/.staging/checkpoint-<step>`` and renamed
to ``<output_dir>/checkpoint-<step>`` by the main process only after every process has finished
writing, so a run killed mid-save never leaves a ``checkpoint-<step>`` that resume would pick up
(``get_last_checkpoint`` ignores the hidden staging directory). The offline trainers let
``transformers.Trainer`` write the files into the staging directory; the online trainers write
their own (trainable weights, optimizer, scheduler, ``trainer_state.json``, RNG per process), gathered to
one file each or, under FSDP's SHARDED_STATE_DICT, as each process's shards, or under DeepSpeed as the engine's
own checkpoint (``deepspeed/``, every process's partitions).

The final model (``save_model``) is staged in ``<output_dir>/.staging-final`` and swapped in through a journal
(:func:`atomic_save`): ``.posttrain-in-progress`` names the staged files and the old ones to drop, and its
atomic creation is the commit point. Before it the old model is untouched; after it the swap is finished by
whoever comes next (the rest of the save, the next run's start, or :func:`check_saved_model` in posttrain's
loaders), so a kill at any moment leaves the complete old model or the complete new one. The last file of
a swap is ``.posttrain-complete`` (JSON: the file names and sizes), which the loaders check.

Disk-full and read-only errors while saving become :class:`OutputDirError` naming the directory
(:func:`disk_errors`); one writer per ``output_dir`` is :mod:`posttrain.output_dir`'s.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import shutil
import socket
import time

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

from .errors import PostTrainError

logger = logging.getLogger(__name__)

STAGING_DIR = ".staging"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SHARDED_DIR = "sharded"
DEEPSPEED_TAG = "deepspeed"  # under DeepSpeed: engine.save_checkpoint's own layout, every process's partitions
# What from_pretrained starts from, and weight files: an old model's files that a new final save removes when
# the old directory has no completion marker to list them (a model not saved by posttrain, or by an older one).
COMMIT_FILES = ("config.json", "adapter_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
FINAL_STAGING = ".staging-final"  # the final model, staged (see atomic_save)
COMPLETE_MARKER = ".posttrain-complete"  # written last: {"format", "files": {name: size}, "saved_by", "time"}
IN_PROGRESS_MARKER = ".posttrain-in-progress"  # the swap's journal: {"staging", "files", "remove", "pid", "host"}
# errno values that mean "this directory cannot take the write", whatever was being written
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENOTDIR}


class OutputDirError(PostTrainError, OSError):
    """``output_dir`` (or a model directory) cannot be used: another run holds it, it cannot be written (read-only,
    no permission, a full disk), or it holds a model left by an interrupted save. The message names the directory
    and what to do; ``posttrain <command>`` prints it as one line and exits with status 2."""


def checkpoint_name(step: int) -> str:
    return f"{PREFIX_CHECKPOINT_DIR}-{step}"


@contextlib.contextmanager
def atomic_checkpoint(accelerator, run_dir: str, name: str, save_total_limit: int | None = None,
                      best_model_checkpoint=None):
    """Yield the staging directory to write checkpoint ``name`` into; on exit, once every process has
    written, move it to ``run_dir/name`` and keep only the newest ``save_total_limit`` checkpoints (and
    the best one: ``best_model_checkpoint``, a path or a function returning it, read after writing)."""
    staging = os.path.join(run_dir, STAGING_DIR, name)
    final = os.path.join(run_dir, name)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with disk_errors(run_dir, f"checkpoint {name}"):
            shutil.rmtree(staging, ignore_errors=True)  # debris of an earlier killed save
            os.makedirs(staging)
    accelerator.wait_for_everyone()
    with disk_errors(run_dir, f"checkpoint {name}", cleanup=staging):
        yield staging
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with disk_errors(run_dir, f"checkpoint {name}"):
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(staging, final)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(staging))  # only when empty
            # (a kill right here leaves one checkpoint too many: the next run's start removes it, see output_dir_lock)
            best = best_model_checkpoint() if callable(best_model_checkpoint) else best_model_checkpoint
            rotate_checkpoints(output_dir=run_dir, save_total_limit=save_total_limit,
                               best_model_checkpoint=final if best == staging else best, use_mtime=False)
    accelerator.wait_for_everyone()


@contextlib.contextmanager
def atomic_save(accelerator, output_dir: str):
    """Yield a staging directory (``output_dir/.staging-final``) for a final model save, then swap the new model
    into ``output_dir`` (which also holds checkpoints and logs, so it cannot be replaced whole).

    Once every process has written, the main process fsyncs the staged files, writes the staged completion
    marker, and commits by creating the journal ``output_dir/.posttrain-in-progress`` atomically: the staged
    files, and the old model's files the new one does not replace (those its completion marker lists; for a
    directory without one, its config and weight files). It then removes the old completion marker and those
    files, moves the new files in, moves the completion marker in last, and removes the journal. A kill before
    the commit leaves the old model as it was (the staging debris is ignored, and removed by the next save); a
    kill after it leaves a journal that :func:`finish_interrupted_save` completes (the rest of this save, the next
    run's start, or posttrain's loaders through :func:`check_saved_model`)."""
    staging = os.path.join(output_dir, FINAL_STAGING)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with disk_errors(output_dir, "the final model"):
            os.makedirs(output_dir, exist_ok=True)
            finish_interrupted_save(output_dir)  # an earlier save's swap, killed after its commit
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging)
    accelerator.wait_for_everyone()
    with disk_errors(output_dir, "the final model", cleanup=staging):
        yield staging
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with disk_errors(output_dir, "the final model", cleanup=staging):
            journal = _stage_complete(output_dir, staging)
        with disk_errors(output_dir, "the final model"):
            _write_json_atomic(os.path.join(output_dir, IN_PROGRESS_MARKER), journal)  # the commit point
            _roll_forward(output_dir, journal)
    accelerator.wait_for_everyone()


def _fsync(path: str) -> None:
    """Flush a file or directory to disk (best effort where a file system cannot fsync a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_json_atomic(path: str, value: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(value, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync(os.path.dirname(path) or ".")


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _old_model_files(output_dir: str) -> set[str]:
    """The files of the model now in ``output_dir``: what its completion marker lists, or (no marker) its config
    and weight files -- never checkpoints, logs or posttrain's own markers."""
    manifest = _read_json(os.path.join(output_dir, COMPLETE_MARKER))
    if manifest and isinstance(manifest.get("files"), dict):
        return {n for n in manifest["files"] if os.path.basename(n) == n and not n.startswith(".")}
    return {n for n in os.listdir(output_dir) if os.path.isfile(os.path.join(output_dir, n))
            and (n in COMMIT_FILES or n.endswith(WEIGHT_SUFFIXES))}


def _stage_complete(output_dir: str, staging: str) -> dict:
    """fsync the staged files, write the staged completion marker; return the swap's journal."""
    from . import __version__

    files = {}
    for name in sorted(os.listdir(staging)):
        path = os.path.join(staging, name)
        if os.path.isfile(path):
            _fsync(path)
            files[name] = os.path.getsize(path)
        else:
            files[name] = None  # a directory (moved whole)
    _write_json_atomic(os.path.join(staging, COMPLETE_MARKER), {
        "format": 1, "files": files, "saved_by": f"posttrain {__version__}",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    remove = sorted(_old_model_files(output_dir) - set(files))
    return {"format": 1, "staging": FINAL_STAGING, "files": files, "remove": remove, "pid": os.getpid(),
            "host": socket.gethostname()}


def _roll_forward(output_dir: str, journal: dict) -> None:
    """Finish a committed swap (idempotent: a file already moved is checked by its size)."""
    staging = os.path.join(output_dir, journal.get("staging", FINAL_STAGING))
    for name, size in journal["files"].items():  # first make sure it can be finished: nothing touched otherwise
        source, target = os.path.join(staging, name), os.path.join(output_dir, name)
        if not os.path.lexists(source) and not (
                os.path.exists(target) and (size is None or os.path.getsize(target) == size)):
            raise FileNotFoundError(f"{name} is neither staged in {staging} nor complete in {output_dir}")
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(output_dir, COMPLETE_MARKER))  # the old model's: it is going away
    for name in journal["remove"]:
        target = os.path.join(output_dir, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(target)
    for name, size in journal["files"].items():
        source, target = os.path.join(staging, name), os.path.join(output_dir, name)
        if os.path.lexists(source):
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            os.replace(source, target)
        elif not os.path.exists(target) or (size is not None and os.path.getsize(target) != size):
            raise FileNotFoundError(f"{name} is neither staged in {staging} nor complete in {output_dir}")
    _fsync(output_dir)
    source = os.path.join(staging, COMPLETE_MARKER)
    if os.path.exists(source):
        os.replace(source, os.path.join(output_dir, COMPLETE_MARKER))
    else:  # moved by an earlier, interrupted roll-forward
        if _read_json(os.path.join(output_dir, COMPLETE_MARKER)) is None:
            _write_json_atomic(os.path.join(output_dir, COMPLETE_MARKER), {"format": 1, "files": journal["files"]})
    _fsync(output_dir)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(output_dir, IN_PROGRESS_MARKER))
    shutil.rmtree(staging, ignore_errors=True)


def finish_interrupted_save(output_dir: str) -> bool:
    """Complete a final save that was killed after its commit (``.posttrain-in-progress`` present); True when
    there was one. Raises :class:`OutputDirError` when it cannot be completed."""
    journal_path = os.path.join(output_dir, IN_PROGRESS_MARKER)
    if not os.path.exists(journal_path):
        return False
    journal = _read_json(journal_path)
    try:
        if not journal or not isinstance(journal.get("files"), dict) or not isinstance(journal.get("remove"), list):
            raise ValueError(f"its journal {IN_PROGRESS_MARKER} is unreadable")
        _roll_forward(output_dir, journal)
    except (OSError, ValueError) as err:
        raise OutputDirError(
            f"{output_dir} was left by an interrupted save (pid {(journal or {}).get('pid', '?')} on "
            f"{(journal or {}).get('host', '?')} was killed while moving the new model into place), and the save "
            f"could not be finished here: {err}. Run the training (or save_model) into it again.") from err
    logger.warning("%s: finished a final save that was interrupted while moving the new model into place.", output_dir)
    return True


def has_complete_model(output_dir: str) -> bool:
    """Whether ``output_dir`` holds a finished final save (its completion marker, and no swap under way)."""
    return (os.path.isfile(os.path.join(output_dir, COMPLETE_MARKER))
            and not os.path.exists(os.path.join(output_dir, IN_PROGRESS_MARKER)))


def check_saved_model(path) -> None:
    """What posttrain's loaders check before loading a local directory: an interrupted final save is finished (or,
    when that cannot be done, an :class:`OutputDirError`), a directory with a completion marker must hold every file
    it lists at its size, and a directory holding only a killed save's staging area is an error. A directory that
    posttrain did not write (no markers) passes unchanged."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
        return
    path = os.fspath(path)
    finish_interrupted_save(path)
    manifest = _read_json(os.path.join(path, COMPLETE_MARKER))
    if manifest is not None:
        for name, size in (manifest.get("files") or {}).items():
            file = os.path.join(path, name)
            if not os.path.exists(file):
                raise OutputDirError(f"{path} is not a complete model: {name}, written by its save, is missing.")
            # weights at their size; text files (the card, configs) are edited after saving, by posttrain too
            if size is not None and name.endswith(WEIGHT_SUFFIXES) and not name.endswith(".json") \
                    and os.path.getsize(file) != size:
                raise OutputDirError(f"{path} is not a complete model: {name} has {os.path.getsize(file)} bytes, "
                                     f"its save wrote {size}. Save the model again.")
    elif os.path.isdir(os.path.join(path, FINAL_STAGING)) and not any(
            os.path.exists(os.path.join(path, n)) for n in COMMIT_FILES):
        raise OutputDirError(f"{path} holds no finished model: it was left by an interrupted save (the partial "
                             f"files are in {FINAL_STAGING}/). Run the training (or save_model) into it again.")


# ---- the output directory: one writer, writable, errors that name it ---------------------------------------------
def describe_write_error(err: BaseException, path: str, what: str = "") -> str:
    """A one-line account of why writing under ``path`` failed, and what to do."""
    doing = f" (writing {what})" if what else ""
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or code is None:
        free = _free_bytes(path)
        shown = f"; {free / 2**20:.1f} MiB free" if free is not None else ""
        return (f"No space left on the disk holding {path}{doing}{shown}: free some space or set output_dir to a "
                f"directory on another disk. ({err})")
    if code == errno.EROFS:
        return f"{path} is on a read-only file system{doing}: set output_dir to a writable directory. ({err})"
    if code in (errno.EACCES, errno.EPERM):
        return f"No permission to write in {path}{doing}: set output_dir to a writable directory. ({err})"
    if code == errno.ENOTDIR:
        return f"Cannot write {path}{doing}: a part of that path is a file, not a directory. ({err})"
    return f"Cannot write {path}{doing}: {err}"


def _free_bytes(path: str) -> int | None:
    while path and not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    try:
        return shutil.disk_usage(path or ".").free
    except OSError:
        return None


@contextlib.contextmanager
def disk_errors(path: str, what: str = "", cleanup: str | None = None):
    """Turn a failed write under ``path`` into an :class:`OutputDirError` that names the directory (and the disk):
    an ``OSError`` with a disk errno (ENOSPC, EROFS, EACCES, ...), or torch's C++ writer failing on a full disk
    (``basic_ios::clear: iostream error``, ``PytorchStreamWriter failed writing file``). ``cleanup``: a staging
    directory removed on such an error (it frees the space the failed save took)."""
    try:
        yield
    except OutputDirError:
        raise
    except OSError as err:
        if err.errno not in DISK_ERRNOS:
            raise
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)
        raise OutputDirError(describe_write_error(err, path, what)) from err
    except RuntimeError as err:  # torch.save / safetensors report a full disk without an errno
        free = _free_bytes(path)
        if not (("iostream" in str(err) or "writing file" in str(err) or "No space" in str(err))
                and free is not None and free < 64 * 2**20):
            raise
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)
        raise OutputDirError(describe_write_error(err, path, what)) from err


def finished_step(checkpoint: str | None, max_steps: int | None, num_train_epochs: float | None = None) -> int | None:
    """The step of ``checkpoint`` when it ends the run (its ``global_step`` reaches ``max_steps``, or with
    ``max_steps`` <= 0 the checkpoint's own ``max_steps`` for the same ``num_train_epochs``); None otherwise."""
    if not checkpoint:
        return None
    state = _read_json(os.path.join(checkpoint, "trainer_state.json"))
    if not state or not isinstance(state.get("global_step"), int):
        return None
    target = max_steps if max_steps and max_steps > 0 else None
    if target is None and num_train_epochs is not None and state.get("num_train_epochs") == num_train_epochs:
        target = state.get("max_steps")
    return state["global_step"] if target and state["global_step"] >= target else None


def resolve_resume(value, output_dir: str) -> str | None:
    """The checkpoint to resume from: a path as given; ``True``/``"last"``/``"auto"`` for the newest in
    ``output_dir`` (None when there is none: start fresh); None/False for no resume."""
    if value in (None, False, ""):
        return None
    if value is True or str(value).lower() in ("last", "auto", "true"):
        return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if not os.path.isdir(value):
        raise FileNotFoundError(f"resume_from_checkpoint={value!r} is not a directory; give a checkpoint-<step> "
                                "directory, or 'last' for the newest one in output_dir.")
    return value


def save_rng(directory: str, process_index: int) -> None:
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    torch.save(state, os.path.join(directory, f"rng_state_{process_index}.pt"))


def load_rng(directory: str, process_index: int) -> None:
    state = torch.load(os.path.join(directory, f"rng_state_{process_index}.pt"), weights_only=False)
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _trainable_names(model) -> set[str]:
    return {n.removeprefix("module.") for n, p in model.named_parameters() if p.requires_grad}


def _state_dict_options(full: bool, **kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full, **kwargs)


def save_training_state(accelerator, model, optimizer, directory: str, sharded: bool = False) -> None:
    """The parameters that train (all of them, or the LoRA adapter and value head) and the optimizer state,
    keyed by parameter name (torch.distributed.checkpoint's state-dict API, which sees through DDP and FSDP2).
    Gathered to the main process as ``trainable.safetensors`` and ``optimizer.pt`` (resumable on any
    number of processes), or with ``sharded`` (FSDP's SHARDED_STATE_DICT) written by every process as its
    own shards into ``sharded/`` (no process ever holds the whole state). Every process must call this."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from .distributed import deepspeed_engine

    engine = deepspeed_engine(model)
    if engine is not None:  # DeepSpeed's own format: every process writes its partitions of weights and optimizer
        engine.save_checkpoint(directory, tag=DEEPSPEED_TAG, save_latest=False)
        return
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper -> the torch optimizer
    names = _trainable_names(model)
    weights, optim = get_state_dict(model, optimizer, options=_state_dict_options(full=not sharded))
    weights = {n: t for n, t in weights.items() if n in names}
    if sharded:
        import torch.distributed.checkpoint as dcp

        dcp.save({"model": weights, "optimizer": optim}, checkpoint_id=os.path.join(directory, SHARDED_DIR))
    elif accelerator.is_main_process:
        save_file({n: t.contiguous() for n, t in weights.items()}, os.path.join(directory, TRAINABLE_FILE))
        torch.save(optim, os.path.join(directory, OPTIMIZER_FILE))


def load_training_state(model, optimizer, directory: str) -> None:
    """Restore what :func:`save_training_state` wrote (either layout) into the model and optimizer."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from .distributed import deepspeed_engine

    engine = deepspeed_engine(model)
    if engine is not None or os.path.isdir(os.path.join(directory, DEEPSPEED_TAG)):
        if engine is None or not os.path.isdir(os.path.join(directory, DEEPSPEED_TAG)):
            raise ValueError(f"Checkpoint {directory} was written {'without' if engine else 'under'} DeepSpeed; "
                             "resume it the way it was launched.")
        path, _ = engine.load_checkpoint(directory, tag=DEEPSPEED_TAG, load_optimizer_states=True,
                                         load_lr_scheduler_states=False, load_module_strict=False)
        if path is None:
            raise ValueError(f"DeepSpeed could not load the checkpoint in {directory}.")
        return
    optimizer = getattr(optimizer, "optimizer", optimizer)
    names = _trainable_names(model)
    if os.path.isdir(os.path.join(directory, SHARDED_DIR)):
        import torch.distributed.checkpoint as dcp

        weights, optim = get_state_dict(model, optimizer, options=_state_dict_options(full=False))
        state = {"model": {n: t for n, t in weights.items() if n in names}, "optimizer": optim}
        dcp.load(state, checkpoint_id=os.path.join(directory, SHARDED_DIR))
        weights, optim, full = state["model"], state["optimizer"], False
    else:
        from safetensors.torch import load_file

        weights = load_file(os.path.join(directory, TRAINABLE_FILE))
        optim = torch.load(os.path.join(directory, OPTIMIZER_FILE), weights_only=True)
        full = True
    missing, unexpected = sorted(names - set(weights)), sorted(set(weights) - names)
    if missing or unexpected:
        raise ValueError(f"Checkpoint {directory} does not match this model (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}): resume with the same model and LoRA settings.")
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim,
                   options=_state_dict_options(full=full, strict=False))
