"""Scale-out: the one place that knows whether the model is sharded (PyTorch FSDP2 or DeepSpeed ZeRO, both
through accelerate) and what that changes for posttrain -- starting FSDP2 on CPU processes, sharding a frozen
reference like the policy, gathering the weights once per rollout batch for generation, DeepSpeed's settings
and accumulation boundary for the online loop, counting what each process holds, and gathering a full state
dict for a normal ``save_pretrained`` at the end.

Everything else (wrapping, mixed precision, gradient reduce-scatter, sharded checkpoints of the offline
trainers) is accelerate's and PyTorch's own: a script launched with ``accelerate launch --config_file
examples/accelerate/fsdp2.yaml`` runs unchanged.
"""

from __future__ import annotations

import contextlib
import os

import torch
from accelerate.utils import DistributedType


def fsdp_requested() -> bool:
    """Whether ``accelerate launch`` was given an FSDP config (it exports ``ACCELERATE_USE_FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def mixed_precision(args) -> str:
    """accelerate's name for a config's mixed precision."""
    return "bf16" if args.bf16 else ("fp16" if args.fp16 else "no")


def start_fsdp_on_cpu(args) -> None:
    """accelerate starts FSDP only on accelerator devices; on CPU processes (gloo) it silently falls back to
    data parallelism with full copies. PyTorch's FSDP2 itself runs on CPU, so when an FSDP config was
    launched without CUDA, switch the (shared, process-wide) accelerate state to FSDP with the plugin the
    config describes, before any trainer builds its Accelerator. On a GPU this does nothing."""
    if not fsdp_requested() or torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin

    precision = mixed_precision(args)
    Accelerator(cpu=True, mixed_precision=precision)  # the shared state (and the gloo group), as the trainer's
    state = AcceleratorState()
    if state.distributed_type == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()  # reads the launched config from the environment
        if plugin.fsdp_version != 2:
            raise ValueError("On CPU processes posttrain runs FSDP version 2 only (fully_shard): set "
                             "fsdp_version: 2 in the accelerate config.")
        if precision != "no":
            plugin.set_mixed_precision(precision)
        state.fsdp_plugin = plugin
        state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def is_fsdp(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def deepspeed_requested() -> bool:
    """Whether ``accelerate launch`` was given a DeepSpeed config (it exports ``ACCELERATE_USE_DEEPSPEED``)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def is_deepspeed(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def online_deepspeed_plugin(args):
    """The launched DeepSpeed config for an online trainer's own loop (no DataLoader for accelerate to read batch
    sizes from): ``auto`` micro-batch size and clipping filled from ``args``; DeepSpeed's own gradient accumulation
    left at 1, because the loop marks each window's last micro-batch as the boundary itself (``deepspeed_boundary``)
    and already weights its losses per window (DeepSpeed would divide them by its accumulation steps again)."""
    from accelerate.utils import DeepSpeedPlugin

    plugin = getattr(args, "deepspeed_plugin", None) or DeepSpeedPlugin()
    config = plugin.deepspeed_config
    world = int(os.environ.get("WORLD_SIZE", "1"))
    config["train_micro_batch_size_per_gpu"] = args.per_device_train_batch_size
    config["gradient_accumulation_steps"] = 1
    config["train_batch_size"] = args.per_device_train_batch_size * world
    if config.get("gradient_clipping", "auto") == "auto":
        config["gradient_clipping"] = float(args.max_grad_norm or 0.0)
    plugin.gradient_accumulation_steps = 1
    return plugin


@contextlib.contextmanager
def deepspeed_boundary(accelerator, is_last: bool):
    """A micro-batch of an accumulation window under DeepSpeed: ``accelerator.backward`` marks the DeepSpeed
    engine's gradient-accumulation boundary from ``sync_gradients`` and steps the engine at the boundary only."""
    accelerator.gradient_state._set_sync_gradients(is_last)
    try:
        yield
    finally:
        accelerator.gradient_state._set_sync_gradients(True)


def _frozen_deepspeed_config(accelerator, model: torch.nn.Module) -> dict:
    """The policy's DeepSpeed config for a frozen model with no optimizer, as TRL's ``prepare_deepspeed``: the
    optimizer, scheduler and optimizer offload removed, ZeRO-3 kept (the frozen model is partitioned like the
    policy) and any lower stage turned to 0 (a full copy per process), ``auto`` values resolved or dropped."""
    import copy

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    zero = config.setdefault("zero_optimization", {})
    zero.pop("offload_optimizer", None)
    stage = int(zero.get("stage", 0))
    if stage != 3:
        zero["stage"] = 0
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if stage == 3 and hidden:  # what accelerate fills in for the policy
        sizes = {"reduce_bucket_size": hidden * hidden, "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
                 "stage3_param_persistence_threshold": 10 * hidden}
        for key, value in sizes.items():
            if zero.get(key) == "auto":
                zero[key] = value
    micro = config.get("train_micro_batch_size_per_gpu")
    config["train_micro_batch_size_per_gpu"] = micro if isinstance(micro, int) else 1
    config["gradient_accumulation_steps"] = 1
    config.pop("train_batch_size", None)  # DeepSpeed derives it

    def drop_auto(node):
        for key in [k for k, v in node.items() if v == "auto"]:
            del node[key]
        for value in node.values():
            if isinstance(value, dict):
                drop_auto(value)

    drop_auto(config)
    return config


def sharded_checkpoints(accelerator) -> bool:
    """Whether checkpoints hold each process's shards (FSDP with ``fsdp_state_dict_type: SHARDED_STATE_DICT``)
    rather than the gathered state (FULL_STATE_DICT, and every unsharded run)."""
    return is_fsdp(accelerator) and "SHARDED" in str(accelerator.state.fsdp_plugin.state_dict_type)


def shard_frozen(accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """A frozen model (a reference copy, a reward model) placed like the policy: sharded with the same
    FSDP2 wrapping under FSDP, partitioned by a DeepSpeed inference engine under ZeRO-3 (a full copy per
    process under ZeRO-1/2, as TRL), else moved to the device. Its forwards run in lockstep on every process."""
    model.eval().requires_grad_(False)
    if is_deepspeed(accelerator):
        import deepspeed

        engine, *_ = deepspeed.initialize(model=model, config=_frozen_deepspeed_config(accelerator, model))
        engine.eval()
        return engine
    if is_fsdp(accelerator) and accelerator.is_fsdp2:
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        model = fsdp2_prepare_model(accelerator, model)
        if accelerator.state.fsdp_plugin.reshard_after_forward:
            # The root's own group (embeddings, output layer) would otherwise stay gathered after each forward:
            # FSDP2 keeps it for the backward, which a frozen model never runs.
            model.set_reshard_after_forward(True)
        return model
    return model.to(accelerator.device)


def fsdp_modules(model: torch.nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered_for_generation(model: torch.nn.Module):
    """Gather a sharded model's full weights once, keep them through a whole rollout batch (every decoded
    token, log-prob forward and tool turn inside), and free them after. Inside, forwards are local: no
    collective runs per token, so processes may decode different numbers of tokens and batches. Every
    process must enter together (the gathering is a collective); a nested call is free. Unsharded models
    pass through unchanged."""
    if getattr(model, "_posttrain_gathered", False):  # gathered by an outer call
        yield model
        return
    engine = zero3_engine(model)
    if engine is not None:
        with _zero3_gathered(engine):
            yield model
        return
    modules = fsdp_modules(model)
    if not modules:  # unsharded
        yield model
        return
    # The post-forward reshard setting of each FSDP2 group, restored exactly after (FSDP2 has no getter).
    saved = [(state, getattr(state, "_auto_reshard_after_forward", None),
              [(g, g.post_forward_mesh_info) for g in _param_groups(state)])
             for state in (m._get_fsdp_state() for m in modules)]
    # FSDP2 sets a model up at its root's first forward; generation may run a submodule first (a LoRA model's
    # generate calls the wrapped model), which FSDP2 would refuse, so the root is set up here.
    modules[0]._get_fsdp_state()._lazy_init()
    modules[0].set_reshard_after_forward(False, recurse=True)
    try:
        for module in modules:
            module.unshard()
        model._posttrain_gathered = True
        yield model
    finally:
        model._posttrain_gathered = False
        for module in modules:
            module.reshard()
        for state, auto, groups in saved:
            if auto is not None:
                state._auto_reshard_after_forward = auto
            for group, info in groups:
                group.post_forward_mesh_info = info


def deepspeed_engine(model):
    """The DeepSpeed engine ``model`` is, or None (also when DeepSpeed is not installed)."""
    import sys

    deepspeed = sys.modules.get("deepspeed")
    return model if deepspeed is not None and isinstance(model, deepspeed.DeepSpeedEngine) else None


def zero3_engine(model):
    engine = deepspeed_engine(model)
    return engine if engine is not None and engine.zero_optimization_stage() == 3 else None


@contextlib.contextmanager
def _zero3_gathered(engine):
    """ZeRO-3: every parameter gathered once (``deepspeed.zero.GatheredParameters``) and DeepSpeed's per-module
    fetch/release hooks taken off meanwhile (as TRL's ``unwrap_model_for_generation``), so forwards inside are
    local and may differ in number between processes; hooks put back and parameters repartitioned after."""
    import deepspeed

    offload = getattr(engine.optimizer, "parameter_offload", engine.optimizer)  # the trained policy
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        hooked = offload is not None and hasattr(offload, "forward_hooks")
        if hooked:
            for param in engine.module.parameters():
                param.ds_active_sub_modules.clear()
            for hook in offload.forward_hooks + offload.backward_hooks:
                hook.remove()
            offload.forward_hooks, offload.backward_hooks = [], []
        engine._posttrain_gathered = True
        try:
            yield
        finally:
            engine._posttrain_gathered = False
            if hooked:
                coordinator = getattr(offload, "param_coordinator", None)
                if coordinator is not None and not coordinator.is_invalid_trace():
                    coordinator._invalidate_trace()
                offload._register_deepspeed_module(offload.module)


def _param_groups(state) -> list:
    """An FSDP2 module's parameter groups: a list from torch 2.12 on, a single (or no) group before."""
    groups = getattr(state, "_fsdp_param_groups", None)
    if groups is None:
        group = getattr(state, "_fsdp_param_group", None)
        groups = [group] if group is not None else []
    return list(groups)


def local_numel(model: torch.nn.Module) -> int:
    """Parameter elements this process holds (its shards under FSDP2; its partitions under ZeRO-3, or the whole
    of a parameter ZeRO-3 keeps gathered, below ``stage3_param_persistence_threshold``; everything otherwise)."""
    return sum(max(p.numel(), p.ds_tensor.numel()) if getattr(p, "ds_tensor", None) is not None else
               (p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())


def full_state_dict(accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on CPU, on the main process (every process must call this; the others
    get an empty dict under FSDP)."""
    return accelerator.get_state_dict(model, unwrap=True)
