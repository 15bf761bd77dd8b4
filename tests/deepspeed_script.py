"""Run by tests/test_deepspeed.py: tests/fsdp_script.py's kinds under ``accelerate launch`` with a DeepSpeed config
(or plain python, 1 process), with two DeepSpeed-aware measurements swapped in: the checksum gathers ZeRO-3's
partitioned parameters (``deepspeed.zero.GatheredParameters``) instead of reading torch.distributed.checkpoint's
state dict, and rank 0 adds ``OUT_DIR/<kind>.ds.json``: the ZeRO stage and, per process, the parameter elements
it holds (``ds_tensor``) against their full sizes (``ds_numel``), for the policy and for a reference copy.

Same arguments as fsdp_script.py."""

import json
import os
import runpy
import sys

import torch
import torch.distributed.checkpoint.state_dict as dcp_state_dict

HERE = os.path.dirname(os.path.abspath(__file__))
plain_model_state_dict = dcp_state_dict.get_model_state_dict


def unwrap(model):
    return getattr(model, "module", model)


def gathered_model_state_dict(model, *args, **kwargs):
    """The full weights of a ZeRO-3 model (every process gathers), else torch.distributed.checkpoint's."""
    params = list(unwrap(model).parameters())
    if not any(hasattr(p, "ds_id") for p in params):
        return plain_model_state_dict(model, *args, **kwargs)
    import deepspeed

    with deepspeed.zero.GatheredParameters(params):
        return {name: p.detach().clone() for name, p in unwrap(model).named_parameters()}


def partition_stats(model):
    local = full = 0
    for p in unwrap(model).parameters():
        part = getattr(p, "ds_tensor", None)
        local += max(p.numel(), part.numel()) if part is not None else p.numel()  # whole when kept gathered
        full += getattr(p, "ds_numel", p.numel())
    return {"local": local, "full": full}


dcp_state_dict.get_model_state_dict = gathered_model_state_dict  # fsdp_script imports it at call time

import transformers  # noqa: E402

original_train = transformers.Trainer.train


def train_and_record(self, *args, **kwargs):
    """After training: the partitioning of the policy (and of a reference copy), written next to the kind's json."""
    out = original_train(self, *args, **kwargs)
    engine = self.model_wrapped
    stats = {"stage": engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else None,
             "policy": partition_stats(self.model)}
    if getattr(self, "ref_model", None) is not None:
        stats["ref"] = partition_stats(self.ref_model)
        stats["ref_engine"] = type(self.ref_model).__name__
    if int(os.environ.get("RANK", 0)) == 0:
        name = os.path.basename(os.path.normpath(self.args.output_dir))
        with open(os.path.join(os.path.dirname(os.path.normpath(self.args.output_dir)), f"{name}.ds.json"), "w") as fh:
            json.dump(stats, fh)
    return out


transformers.Trainer.train = train_and_record
if os.environ.get("DS_TEST_GRADIENT_ACCUMULATION"):  # GRPO's windows of several micro-batches
    import posttrain

    class AccumulatingGRPOConfig(posttrain.GRPOConfig):
        def __init__(self, *args, **kwargs):
            kwargs["gradient_accumulation_steps"] = int(os.environ["DS_TEST_GRADIENT_ACCUMULATION"])
            super().__init__(*args, **kwargs)

    posttrain.GRPOConfig = AccumulatingGRPOConfig

destroy = torch.distributed.destroy_process_group
torch.distributed.destroy_process_group = lambda *a, **k: None  # kept for the sampling check below
sys.argv = [os.path.join(HERE, "fsdp_script.py"), *sys.argv[1:]]
script = runpy.run_path(sys.argv[0], run_name="__main__")
trainer, kind = script["trainer"], script["kind"]
if kind == "grpo" and hasattr(trainer.model, "zero_optimization_stage"):
    # real sampling of the last kind under DeepSpeed: the same completions and log-probs as the saved (full) model
    out_dir = script["out_dir"]
    from transformers.integrations import deepspeed as hf_deepspeed

    plain_load = script["sampling_check"].__globals__["load_model"]

    def load_unpartitioned(*args, **kwargs):  # the comparison model, whole (no deepspeed.zero.Init)
        saved, hf_deepspeed._hf_deepspeed_config_weak_ref = hf_deepspeed._hf_deepspeed_config_weak_ref, None
        try:
            return plain_load(*args, **kwargs)
        finally:
            hf_deepspeed._hf_deepspeed_config_weak_ref = saved

    script["sampling_check"].__globals__["load_model"] = load_unpartitioned
    sampling = script["sampling_check"](trainer, os.path.join(out_dir, f"{kind}-final"))
    flags = torch.tensor([sampling["same_completions"], sampling["same_logprobs"]], dtype=torch.int64)
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
    if int(os.environ.get("RANK", 0)) == 0:
        with open(os.path.join(out_dir, f"{kind}.sampling.json"), "w") as fh:
            json.dump({**sampling, "all_ranks": flags.tolist(), "stage": trainer.model.zero_optimization_stage(),
                       "policy": partition_stats(trainer.model)}, fh)
if torch.distributed.is_initialized():
    torch.distributed.barrier()
    destroy()
