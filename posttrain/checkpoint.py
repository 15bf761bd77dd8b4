"""Checkpoints, for every trainer: written atomically, rotated, carrying RNG state, resumed exactly.

A checkpoint is written by every process into ``<output_dir>/.staging/checkpoint-<step>`` and renamed
to ``<output_dir>/checkpoint-<step>`` by the main process only after every process has finished
writing, so a run killed mid-save never leaves a ``checkpoint-<step>`` that resume would pick up
(``get_last_checkpoint`` ignores the hidden staging directory). The offline trainers let
``transformers.Trainer`` write the files into the staging directory; the online trainers write
their own (trainable weights, optimizer, scheduler, ``trainer_state.json``, RNG per process), gathered to
one file each or, under FSDP's SHARDED_STATE_DICT, as each process's shards, or under DeepSpeed as the engine's
own checkpoint (``deepspeed/``, every process's partitions).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

STAGING_DIR = ".staging"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SHARDED_DIR = "sharded"
DEEPSPEED_TAG = "deepspeed"  # under DeepSpeed: engine.save_checkpoint's own layout, every process's partitions
# What from_pretrained starts from: a final save moves these into place last (see atomic_save).
COMMIT_FILES = ("config.json", "adapter_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


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
        shutil.rmtree(staging, ignore_errors=True)  # debris of an earlier killed save
        os.makedirs(staging)
    accelerator.wait_for_everyone()
    yield staging
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(staging, final)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(staging))  # only when empty
        best = best_model_checkpoint() if callable(best_model_checkpoint) else best_model_checkpoint
        rotate_checkpoints(output_dir=run_dir, save_total_limit=save_total_limit,
                           best_model_checkpoint=final if best == staging else best, use_mtime=False)
    accelerator.wait_for_everyone()


@contextlib.contextmanager
def atomic_save(accelerator, output_dir: str):
    """Yield a staging directory for a final model save (``output_dir`` also holds checkpoints, so it cannot
    be swapped whole). Once every process has written, the main process removes the old model's
    ``config.json``/``adapter_config.json`` and any old weight file the new save does not replace, moves
    the new files in, and moves the new config files in last. A run killed mid-save therefore never leaves
    old weights that load as if they were the new model: until the last rename the directory holds no
    config, and ``from_pretrained`` refuses it."""
    staging = os.path.join(output_dir, STAGING_DIR, "model")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
    accelerator.wait_for_everyone()
    yield staging
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        new = set(os.listdir(staging))
        for name in os.listdir(output_dir):
            if name in COMMIT_FILES or (name.endswith(WEIGHT_SUFFIXES) and name not in new):
                os.remove(os.path.join(output_dir, name))
        for name in sorted(new, key=lambda n: n in COMMIT_FILES):  # the commit files last
            target = os.path.join(output_dir, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            os.replace(os.path.join(staging, name), target)
        os.rmdir(staging)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(staging))  # only when empty
    accelerator.wait_for_everyone()


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
