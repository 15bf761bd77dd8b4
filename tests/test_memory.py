"""`posttrain estimate-memory`: the estimate against the measured peak of real training runs on tiny models,
hand-computed components, and the command line.

How the peak is measured: torch's profiler with ``profile_memory=True`` records every allocation and free of
torch's CPU allocator; the running sum of those events, from before the model is built to the end of training,
peaks at the bytes of live tensors -- what ``torch.cuda.max_memory_allocated`` reports on a GPU, and what the
estimate estimates. Peak RSS (``ru_maxrss``, as benchmarks/memory.py measures) is not used: it also counts the
Python heap, the tokenizer, datasets' Arrow buffers and glibc's free lists (1.3 GiB RSS for an 895 MiB tensor
peak in the SFT case), none of which a GPU holds, and it cannot be reset, so each case would need its own
process (~8 s of imports each).
"""

from __future__ import annotations

import gc
import math
import os
import subprocess
import sys

import pytest
import torch

from posttrain.memory import LoraSpec, estimate_memory, format_bytes, main, parse_bytes, quantized_weight_bytes

MODEL = "tiny:llama-50m"  # 50M parameters: weights, gradients and AdamW state are most of the peak
ROOT = os.path.join(os.path.dirname(__file__), "..")
NEOX_20B = os.path.join(ROOT, "examples", "configs", "gpt-neox-20b.json")

# each case: the trainer's settings, and the same run as estimate_memory's arguments
CASES = {
    "sft full": dict(method="sft", per_device_train_batch_size=4, max_length=128),
    "sft lora": dict(method="sft", per_device_train_batch_size=4, max_length=128, lora="r=16 dropout=0.05"),
    "dpo full": dict(method="dpo", per_device_train_batch_size=2, max_length=128, max_prompt_length=64),
    "grpo full": dict(method="grpo", per_device_train_batch_size=8, max_length=64, max_prompt_length=32,
                      max_completion_length=32, num_generations=4),
    "sft full, checkpointed": dict(method="sft", per_device_train_batch_size=4, max_length=128,
                                   gradient_checkpointing=True),
    "ppo lora": dict(method="ppo", per_device_train_batch_size=4, max_length=64, max_prompt_length=32,
                     max_completion_length=32, lora="r=16"),
}


# ---- measuring ---------------------------------------------------------------------------------------------
def _text(i: int, n: int) -> str:
    """Text of at least ``n`` characters (every row is truncated to the length under test)."""
    from posttrain.data import toy

    words = " ".join(toy.review_corpus(60, seed=i))
    return (words * (1 + n // max(len(words), 1)))[:n]


def peak_tensor_bytes(prof) -> int:
    """The peak of live CPU tensor bytes during a ``torch.profiler.profile(profile_memory=True)`` block (counted
    from its start: the block must free nothing allocated before it, which the low-water mark checks)."""
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = low = 0
    for _, nbytes in events:
        live += nbytes
        peak, low = max(peak, live), min(low, live)
    assert low > -2**20, f"{-low / 2**20:.0f} MiB allocated before the measurement was freed during it"
    return peak


def measure(case: dict, output_dir: str, model: str = MODEL) -> int:
    """Build the trainer for ``case`` (model included), train 2 steps, return the peak of live tensor bytes."""
    from peft import LoraConfig
    from torch.profiler import ProfilerActivity, profile

    from posttrain import (DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, KTOConfig, KTOTrainer, PPOConfig,
                           PPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer)

    method, batch, length = case["method"], case["per_device_train_batch_size"], case["max_length"]
    init = {"dtype": case.get("dtype", "float32")}
    if case.get("quantization", "none") != "none":
        init["quantization_config"] = {"load_in_8bit": True} if case["quantization"] == "8bit" else {
            "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": init["dtype"]}
    common = dict(output_dir=output_dir, max_steps=2, per_device_train_batch_size=batch, logging_steps=1,
                  report_to=[], save_strategy="no", disable_tqdm=True, model_init_kwargs=init,
                  bf16=case.get("mixed_precision", "no") == "bf16",
                  gradient_checkpointing=case.get("gradient_checkpointing", False))
    lora = LoraSpec.parse(case["lora"]) if case.get("lora") else None
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.targets,
                             task_type="SEQ_CLS" if method == "reward" else "CAUSAL_LM") if lora else None
    reward = lambda completions, **kw: [float(len(c)) for c in completions]  # noqa: E731
    chars = 8 * length  # > 1 token per 8 characters: every row fills max_length
    gc.collect()  # the previous case's trainer (transformers objects hold reference cycles) is freed now, not during
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        if method == "sft":
            rows = [{"text": _text(i, chars)} for i in range(2 * batch)]
            trainer = SFTTrainer(model, SFTConfig(max_length=length, **common), train_dataset=rows,
                                 peft_config=peft_config)
        elif method in ("dpo", "kto", "reward"):
            rows = [{"prompt": _text(i, chars), "chosen": _text(i + 1, chars), "rejected": _text(i + 2, chars)}
                    for i in range(2 * batch)]
            if method == "reward":
                config = RewardConfig(max_length=length, max_prompt_length=case["max_prompt_length"], **common)
                trainer = RewardTrainer(model, config, train_dataset=rows, peft_config=peft_config)
            else:
                config_cls, trainer_cls = (DPOConfig, DPOTrainer) if method == "dpo" else (KTOConfig, KTOTrainer)
                config = config_cls(max_length=length, max_prompt_length=case["max_prompt_length"], **common)
                trainer = trainer_cls(model, args=config, train_dataset=rows, peft_config=peft_config)
        elif method in ("grpo", "ppo"):
            completion = case["max_completion_length"]
            rows = [{"prompt": _text(i, 8 * case["max_prompt_length"])} for i in range(2 * batch)]
            online = dict(max_prompt_length=case["max_prompt_length"], max_completion_length=completion,
                          generation_kwargs={"min_new_tokens": completion}, **common)
            if method == "grpo":
                config = GRPOConfig(num_generations=case["num_generations"], **online)
                trainer = GRPOTrainer(model, reward, args=config, train_dataset=rows, peft_config=peft_config)
            else:
                config = PPOConfig(num_iterations=1, **online)
                trainer = PPOTrainer(model, reward, args=config, train_dataset=rows, peft_config=peft_config)
        else:
            raise ValueError(method)
        trainer.train()
    return peak_tensor_bytes(prof)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: measure(case, str(tmp_path_factory.mktemp("memory"))) for name, case in CASES.items()}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(CASES))
def test_estimate_within_25_percent_of_the_measured_peak(name, measured):
    estimate = estimate_memory(MODEL, dtype="float32", device="cpu", **CASES[name])
    error = estimate.peak / measured[name] - 1
    print(f"\n{name}: estimated {format_bytes(estimate.peak)} ({estimate.peak_phase.name}), measured "
          f"{format_bytes(measured[name])}: {error:+.1%}")
    assert abs(error) <= 0.25, estimate.table()


# ---- components by hand ---------------------------------------------------------------------------------------
def test_weights_are_the_parameter_shapes_times_their_bytes():
    from posttrain.models.tiny import build_tiny_model

    real = build_tiny_model(MODEL)
    n = sum(p.numel() for p in real.parameters())
    for dtype, size in (("float32", 4), ("bfloat16", 2)):
        estimate = estimate_memory(MODEL, "sft", dtype=dtype, max_length=16)
        assert estimate["weights"] == n * size
        assert estimate["gradients"] == n * size and estimate["optimizer state"] == 2 * n * size
        assert estimate["reference model"] == 0 and estimate["KV cache"] == 0
    dpo = estimate_memory(MODEL, "dpo", dtype="bfloat16", max_length=16)
    assert dpo["reference model"] == n * 2  # a frozen copy
    lora = estimate_memory(MODEL, "dpo", dtype="bfloat16", max_length=16, lora="r=8")
    assert lora["reference model"] == 0 and lora.details["reference"] == "adapter"  # the base, adapter off


def test_lora_adapter_is_r_times_in_plus_out_per_target_in_float32():
    # tiny:llama-50m: hidden 576, 9 heads of 64, 3 kv heads: q_proj 576 -> 576, v_proj 576 -> 192 (peft's default)
    estimate = estimate_memory(MODEL, "sft", lora="r=16", dtype="bfloat16", max_length=16)
    per_layer = 16 * (576 + 576) + 16 * (576 + 192)
    assert estimate.details["lora_params"] == 14 * per_layer
    assert estimate["LoRA adapters"] == 14 * per_layer * 4  # peft keeps adapters in float32
    assert estimate["gradients"] == 14 * per_layer * 4 and estimate["optimizer state"] == 2 * 14 * per_layer * 4
    everything = estimate_memory(MODEL, "sft", lora="r=4 targets=all-linear", max_length=16)
    per_layer = 4 * ((576 + 576) * 2 + (576 + 192) * 2 + (576 + 1536) * 3)
    assert everything.details["lora_params"] == 14 * per_layer


def test_quantized_bytes_nf4_double_quant_and_int8():
    n = 4096 * 4096
    blocks = n // 64
    assert quantized_weight_bytes(n, 4096, "4bit") == n // 2 + blocks + 4 * math.ceil(blocks / 256)
    assert abs(quantized_weight_bytes(n, 4096, "4bit") * 8 / n - 4.127) < 0.001  # ~4.127 bits a weight
    assert quantized_weight_bytes(n, 4096, "8bit") == n + 4 * 4096  # a byte a weight + float32 row scales
    # GPT-NeoX-20B: 44 layers of query_key_value, dense, dense_h_to_4h, dense_4h_to_h are quantized; embeddings,
    # output layer, norms and biases are not (float32 after prepare_model_for_kbit_training, else the dtype)
    h, inter, layers, vocab = 6144, 24576, 44, 50432
    shapes = [(3 * h, h), (h, h), (inter, h), (h, inter)]
    quantized = sum(o * i for o, i in shapes) * layers
    rest = 2 * vocab * h + layers * (3 * h + h + inter + h + 4 * h) + 2 * h  # embeddings, head, biases, norms
    for bits in ("8bit", "4bit"):
        expected = layers * sum(quantized_weight_bytes(o * i, o, bits) for o, i in shapes)
        upcast = estimate_memory(NEOX_20B, "sft", lora="r=16", quantization=bits, dtype="float16", max_length=16)
        assert upcast.details["quantized_params"] == quantized and upcast.details["n_params"] == quantized + rest
        assert upcast["weights"] == expected + rest * 4
        kept = estimate_memory(NEOX_20B, "sft", lora="r=16", quantization=bits, dtype="float16", max_length=16,
                               kbit_float32=False)
        assert kept["weights"] == expected + rest * 2


def test_kv_cache_formula_and_generation_phase():
    estimate = estimate_memory(MODEL, "grpo", per_device_train_batch_size=8, num_generations=4, max_prompt_length=100,
                               max_completion_length=28, dtype="bfloat16", max_length=128)
    # batch x (prompt + completion) x layers x 2 x kv_heads x head_dim x dtype bytes
    assert estimate["KV cache"] == 8 * (100 + 28) * 14 * 2 * 3 * 64 * 2
    phases = {p.name: p for p in estimate.phases}
    assert phases["generation"].parts["KV cache"] == estimate["KV cache"]
    assert "gradients" not in phases["generation"].parts  # freed after each step
    assert estimate.details["rows"] == 2 and estimate.details["length"] == 100 + 4 * 28  # prompt shared per group
    neox = estimate_memory(NEOX_20B, "ppo", lora="r=16", quantization="8bit", dtype="float16", max_prompt_length=64,
                           max_completion_length=64, per_device_train_batch_size=2, kbit_float32=False)
    assert neox["KV cache"] == 2 * 128 * 44 * 2 * 64 * 96 * 2


def test_activation_trace_matches_the_llama_layer_by_hand():
    """What a Llama layer saves for the backward, per token, in float32, all weights trainable: each RMSNorm its
    input, normalised input, output and 1/rms (3h + 1); q (rotated), k and v repeated to 9 heads, sdpa's output and
    the o_proj input copy (5h) and a log-sum-exp per head; the MLP's gate, SiLU output, up and product (4 x 1536).
    The rotary cos and sin (64 each) are saved once, by the first layer."""
    h, inter, heads, head_dim = 576, 1536, 9, 64
    by_hand = 4 * (2 * (3 * h + 1) + 5 * h + heads + 4 * inter)
    estimate = estimate_memory(MODEL, "sft", dtype="float32", max_length=16)
    trace = estimate.details["trace"]
    assert trace.layers == 14 * by_hand + 2 * head_dim * 4 and trace.layer_max == by_hand + 2 * head_dim * 4
    assert estimate_memory(MODEL, "sft", dtype="bfloat16", max_length=16).details["trace"].layers < trace.layers
    tokens = estimate.details["tokens"]
    checkpointed = estimate_memory(MODEL, "sft", dtype="float32", max_length=16, gradient_checkpointing=True)
    saved = estimate["activations"] - checkpointed["activations"]
    # checkpointed: each layer keeps its input (h floats) and one layer is recomputed at a time (and its mask bias)
    assert saved == tokens * (trace.layers - 14 * h * 4 - trace.layer_max) + 13 * 16 * 16 * 4


def test_phases_and_verdict():
    estimate = estimate_memory(MODEL, "sft", dtype="float32", per_device_train_batch_size=4, max_length=128,
                               device_memory="1GiB")
    phases = {p.name: p.bytes for p in estimate.phases}
    assert estimate.peak == max(phases.values())
    assert phases["optimizer step"] == estimate["weights"] + estimate["optimizer state"] + estimate["gradients"]
    assert estimate.usable == int(2**30 * 0.9) and estimate.fits == (estimate.peak <= estimate.usable)
    small = estimate_memory(MODEL, "sft", dtype="float32", per_device_train_batch_size=4, max_length=128,
                            device_memory="512MiB")
    assert small.fits is False and "DOES NOT FIT" in small.table()
    assert parse_bytes("24GiB") == 24 * 2**30 and parse_bytes("80GB") == 80 * 10**9 and parse_bytes("16G") == 16 * 2**30


# ---- the command line ---------------------------------------------------------------------------------------
def test_cli_prints_the_table_and_the_verdict(capsys):
    assert main(["--model", MODEL, "--method", "dpo", "--lora", "r=8", "--per_device_train_batch_size", "2",
                 "--max_length", "64", "--device_memory", "24GiB"]) == 0
    out = capsys.readouterr().out
    for line in ("weights", "LoRA adapters", "gradients", "optimizer state", "reference model", "activations",
                 "logits", "KV cache", "expected peak:", "verdict: FITS"):
        assert line in out, line
    assert main(["--model", NEOX_20B, "--method", "sft", "--per_device_train_batch_size", "8", "--dtype",
                 "bfloat16", "--device_memory", "24GiB"]) == 0
    assert "verdict: DOES NOT FIT" in capsys.readouterr().out


def test_cli_is_registered_and_help_explains_every_flag(capsys):
    from posttrain import cli

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--model", "--method", "--lora", "--quantization", "--per_device_train_batch_size", "--max_length",
                 "--max_prompt_length", "--max_completion_length", "--num_generations", "--dtype",
                 "--gradient_checkpointing", "--device_memory", "--margin", "--reference", "--kbit_float32"):
        assert flag in text, flag
    assert cli.main(["estimate-memory", "--model", MODEL, "--max_length", "32"]) == 0
    assert "expected peak" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--model", MODEL, "--method", "ppo2"], "invalid choice"),
    (["--model", MODEL, "--quantization", "4bit"], "add --lora"),
    (["--model", MODEL, "--lora", "r=x"], "--lora"),
    (["--model", MODEL, "--device_memory", "24"], "unit"),
    (["--model", MODEL, "--per_device_train_batch_size", "0"], ">= 1"),
    (["--model", "no/such-model-dir"], "no/such-model-dir"),
    (["--model", MODEL, "--method", "grpo", "--max_length", "64"], "--max_prompt_length"),
    (["--model", MODEL, "--gradient_checkpointing", "maybe"], "true or false"),
])
def test_cli_bad_input_is_one_error_line_and_exit_2(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert err[0].startswith("posttrain estimate-memory: error:")


def test_cli_subprocess_runs_offline():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "posttrain.cli", "estimate-memory", "--model", NEOX_20B, "--method",
                          "ppo", "--lora", "r=16", "--quantization", "4bit", "--max_prompt_length", "128",
                          "--max_completion_length", "128", "--gradient_checkpointing", "true", "--device_memory",
                          "24GiB"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "verdict: FITS" in out.stdout
