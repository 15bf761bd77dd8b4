"""Peak-memory arithmetic for a training run, before you rent the GPU: ``posttrain estimate-memory``.

``estimate_memory(model, method, ...)`` returns a :class:`MemoryEstimate`: every component (weights, LoRA adapters,
gradients, optimizer state, reference model, activations, logits, KV cache) in bytes with how it was counted,
the phases of a training step that they add up to, the expected peak (the largest phase) and whether it fits a
device. ``MemoryEstimate.table()`` prints it. The figures are what the CUDA allocator would hand out
(``torch.cuda.max_memory_allocated``); the CUDA context and allocator fragmentation are what the margin is for.

How each component is counted:

- **Weights**: the model is built from its config on the ``meta`` device (no memory, no download), so the
  parameter shapes are the architecture's own. Quantized bases follow transformers' bitsandbytes quantizer:
  every ``nn.Linear`` (and GPT-2 ``Conv1D``) except the output layer, tied weights and the last module is
  quantized. NF4 (4-bit) is 4 bits a weight plus one absmax per 64-weight block, the absmaxes themselves
  quantized to 8 bits with a float32 absmax per 256 blocks (double quantization): ~4.13 bits; LLM.int8 (8-bit)
  is one byte a weight plus a float32 scale per row. The quantizer leaves embeddings, norms, biases and the
  output layer in the compute dtype, but posttrain then runs peft's ``prepare_model_for_kbit_training``, which
  upcasts them to float32 -- so the hidden states, activations and KV cache of a quantized model are float32
  too (``kbit_float32=False`` counts them in the compute dtype instead).
- **LoRA adapters**: peft's own ``get_peft_model`` on the meta model (its default target modules for the
  architecture, or the ones given); peft keeps adapters in float32 whatever the base dtype.
- **Gradients and optimizer state**: one gradient per trainable parameter in its dtype; AdamW's ``exp_avg`` and
  ``exp_avg_sq`` like the parameter (torch's AdamW keeps them in the parameter's dtype: float32 for adapters and
  float32 weights, bfloat16 for a bfloat16 model trained directly). With ``mixed_precision`` (``--bf16``/
  ``--fp16`` autocast on float32 weights, posttrain's default on a bf16 GPU) the float32 weights are the master
  copy and autocast holds half-precision copies of the linear weights from the forward to the backward.
  Gradients are freed after every optimizer step (``zero_grad(set_to_none=True)``), so they are not alive
  while the next forward saves its activations (unless gradients accumulate over micro-batches).
- **Reference model**: a frozen copy of the weights for DPO, KTO, PPO and RLOO (GRPO's default ``beta=0`` keeps
  none); with LoRA the reference is the base with the adapter switched off, so no copy. PPO's value head is a
  float32 ``Linear(hidden, 1)``.
- **Activations**: the tensors autograd saves for the backward pass, per layer per token, found by running the
  model's own forward on the meta device under ``torch.autograd.graph.saved_tensors_hooks`` (so each
  architecture's norms, casts, activation functions and LoRA dropout count as they are), with attention as sdpa
  on a GPU runs it (flash or memory-efficient kernels keep q, k, v, the output and a float32 log-sum-exp, not
  the attention matrix). Batches are assumed padded: the boolean attention mask, and the float bias sdpa turns
  it into in every layer, are ``rows x length^2``. With gradient checkpointing each layer keeps only its input
  and one layer's activations are recomputed at a time.
- **Logits**: posttrain never builds full-vocabulary logits for the loss: ``_OutputLayerLogps`` runs the output
  layer on row chunks of ~64 MiB of float32 (``losses/logprobs.py``), keeping only each labelled token's hidden
  state and log-normaliser. Its working memory is a few chunks, plus a float32 copy of a half-precision output
  weight and a float32 gradient accumulator for it in the backward. Generation still makes ``[batch, vocab]``
  logits at every step (with a few float32 copies: processors, softmax, log-softmax).
- **KV cache** (online methods): ``batch x (prompt + completion) x layers x 2 x kv_heads x head_dim x dtype
  bytes``, reserved for the whole generation as posttrain's decoding loop does.

The peak is the largest of these phases: *backward start* (weights, adapters, reference, optimizer state,
every saved activation, plus the largest transient of that moment: the output layer's backward chunk and
gradient, a reference forward without gradients (DPO, KTO), or a dequantized weight (bitsandbytes dequantizes
one weight at a time)), *optimizer step* (weights, adapters, reference, gradients, optimizer state, and for
the online trainers' ``torch.optim.AdamW`` on a GPU its multi-tensor temporaries) and, for online methods,
*generation* (weights, adapters, reference, optimizer state, the KV cache and the largest of the per-step
logits, the prompt prefill and the reference's no-grad forward over the rollout).

Not counted: reward models of the online methods (``--reward_model_name_or_path``), evaluation, loading
(``from_pretrained`` converting a float32 checkpoint to float16 briefly holds both), and what the margin covers
(the CUDA context, cuBLAS/cuDNN workspaces, allocator fragmentation). Sliding-window layers are counted as
full-attention ones (an upper bound). Mixed precision is traced as the model in half precision.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import re
import sys
import warnings
import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

METHODS = ("sft", "reward", "dpo", "kto", "ppo", "grpo", "rloo", "rest")
ONLINE_METHODS = ("ppo", "grpo", "rloo", "rest")
QUANTIZATIONS = ("none", "8bit", "4bit")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MIXED_PRECISION = ("no", "bf16", "fp16")
REFERENCES = ("auto", "copy", "adapter", "none")
NUM_GENERATIONS = {"grpo": 8, "rloo": 8, "rest": 4, "ppo": 1}  # posttrain's defaults
DEFAULT_MARGIN = 0.10
NF4_BLOCK, NESTED_BLOCK = 64, 256
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


# ---- inputs -------------------------------------------------------------------------------------------------
@dataclass
class LoraSpec:
    """A LoRA adapter: rank, scaling numerator (no effect on memory), dropout and target modules (None: peft's
    default for the architecture; "all-linear"; or module names)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: list[str] | str | None = None

    @classmethod
    def parse(cls, items: list[str] | str) -> "LoraSpec":
        """``["r=16", "alpha=32", "dropout=0.05", "targets=q_proj,v_proj"]`` (or one space-separated string of them,
        or a bare rank ``"16"``) -> LoraSpec."""
        items = items.split() if isinstance(items, str) else list(items)
        spec = cls()
        for item in items:
            key, sep, value = item.partition("=")
            if not sep and key.isdigit():
                key, value = "r", key
            key = key.strip().lower()
            try:
                if key in ("r", "rank"):
                    spec.r = int(value)
                elif key in ("alpha", "lora_alpha"):
                    spec.alpha = int(float(value))
                elif key in ("dropout", "lora_dropout"):
                    spec.dropout = float(value)
                elif key in ("targets", "target_modules", "target"):
                    names = [v.strip() for v in re.split(r"[,+]", value) if v.strip()]
                    spec.targets = names[0] if names == ["all-linear"] else (names or None)
                else:
                    raise ValueError(f"unknown LoRA setting {key!r}")
            except ValueError as err:
                raise ValueError(f"--lora {item!r}: {err}; use r=N [alpha=N] [dropout=P] [targets=a,b|all-linear].")
        if spec.r < 1 or not 0 <= spec.dropout < 1:
            raise ValueError(f"--lora: r must be >= 1 and dropout in [0, 1), got r={spec.r}, dropout={spec.dropout}.")
        return spec


def parse_bytes(text: str | int | float) -> int:
    """``"24GiB"``, ``"24 GB"``, ``"80G"`` (G = GiB, as nvidia-smi counts), ``"24576MiB"`` -> bytes."""
    if isinstance(text, (int, float)):
        return int(text)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = (match.group(2) if match else "").lower()
    if not match or unit not in _UNITS:
        raise ValueError(f"device memory {text!r}: give a number and a unit, e.g. 24GiB, 80GB, 16G, 24576MiB.")
    return int(float(match.group(1)) * _UNITS[unit])


def load_config(model: str):
    """The transformers config of ``tiny:NAME``, a model directory, a ``config.json`` path or a hub name
    (offline: only if cached)."""
    import transformers

    if model.startswith("tiny:"):
        from .models.tiny import parse_tiny_name, tiny_config

        return tiny_config(*parse_tiny_name(model))
    if os.path.isfile(model):
        config_dict = transformers.PretrainedConfig.get_config_dict(model)[0]
        if "model_type" not in config_dict:
            raise ValueError(f"{model}: a config.json needs a 'model_type' (e.g. \"gpt_neox\", \"llama\").")
        return transformers.AutoConfig.for_model(**config_dict)
    try:
        return transformers.AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as err:
        raise ValueError(f"{model}: not a tiny: name, a directory with a config.json, a config.json file or a "
                         f"reachable hub model ({str(err).splitlines()[0]})") from None


# ---- the result ---------------------------------------------------------------------------------------------
@dataclass
class Component:
    name: str
    bytes: int
    note: str


@dataclass
class Phase:
    name: str
    parts: dict[str, int]  # component name -> bytes of it alive in this phase

    @property
    def bytes(self) -> int:
        return sum(self.parts.values())


@dataclass
class MemoryEstimate:
    """Every component (``components``, by name), the phases they add up to (``phases``), the ``peak`` phase,
    and the verdict against ``device_memory`` (``fits`` is None without one)."""

    model: str
    method: str
    summary: list[str]
    components: dict[str, Component]
    phases: list[Phase]
    device_memory: int | None = None
    margin: float = DEFAULT_MARGIN
    details: dict = field(default_factory=dict)

    @property
    def peak_phase(self) -> Phase:
        return max(self.phases, key=lambda p: p.bytes)

    @property
    def peak(self) -> int:
        return self.peak_phase.bytes

    @property
    def usable(self) -> int | None:
        return None if self.device_memory is None else int(self.device_memory * (1 - self.margin))

    @property
    def fits(self) -> bool | None:
        return None if self.device_memory is None else self.peak <= self.usable

    def __getitem__(self, name: str) -> int:
        return self.components[name].bytes

    def table(self) -> str:
        peak = self.peak_phase
        lines = [f"posttrain estimate-memory: {self.model}", *[f"  {s}" for s in self.summary], ""]
        rows = [("component", "size", "at peak", "how it is counted")]
        for c in self.components.values():
            alive = peak.parts.get(c.name, 0)
            mark = "-" if not c.bytes else "yes" if alive >= c.bytes else "part" if alive else "no"
            rows.append((c.name, format_bytes(c.bytes) if c.bytes else "-", mark, c.note))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for i, r in enumerate(rows):
            lines.append(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
            if i == 0:
                lines.append("-" * (sum(widths) + 4 + max(len(r[3]) for r in rows) + 2))
        lines.append("")
        for phase in sorted(self.phases, key=lambda p: -p.bytes):
            parts = " + ".join(f"{name} {format_bytes(b)}" for name, b in phase.parts.items() if b)
            tag = "peak" if phase is peak else "    "
            lines.append(f"{tag} {phase.name:<16} {format_bytes(phase.bytes):>10}  = {parts}")
        lines.append("")
        lines.append(f"expected peak: {format_bytes(self.peak)} ({self.peak:,} bytes), in the {peak.name} phase")
        if self.device_memory is not None:
            free = self.device_memory - self.peak
            lines.append(f"device memory: {format_bytes(self.device_memory)}, keeping a {self.margin:.0%} margin for the "
                         f"CUDA context, cuBLAS workspaces and allocator fragmentation: {format_bytes(self.usable)} usable")
            if self.fits:
                lines.append(f"verdict: FITS -- the peak uses {self.peak / self.device_memory:.0%} of the device, "
                             f"{format_bytes(free)} to spare")
            else:
                over = self.peak - self.usable
                how = self.summary[1]
                hints = [h for h, unused in (("--lora r=16", "LoRA" not in how),
                                             ("--quantization 4bit", "4-bit base" not in how),
                                             ("--gradient_checkpointing true", "checkpointing off" in self.summary[2]))
                         if unused] + ["a smaller batch or shorter sequences"]
                lines.append(f"verdict: DOES NOT FIT -- {format_bytes(over)} over the usable memory "
                             f"({self.peak / self.device_memory:.0%} of the device); try {', '.join(hints)}")
        return "\n".join(lines)


def format_bytes(n: float) -> str:
    n = float(n)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.{1 if n >= 10 * size else 2}f}{unit}"
    return str(int(n))


# ---- the model on the meta device ---------------------------------------------------------------------------
def quantized_weight_bytes(numel: int, out_features: int, quantization: str) -> int:
    """Bytes of one quantized weight matrix: NF4 with double quantization (4 bits a weight, a uint8 absmax per
    64-weight block, a float32 absmax per 256 blocks) or LLM.int8 (1 byte a weight, a float32 scale per row)."""
    if quantization == "4bit":
        blocks = math.ceil(numel / NF4_BLOCK)
        return math.ceil(numel / 2) + blocks + 4 * math.ceil(blocks / NESTED_BLOCK)
    if quantization == "8bit":
        return numel + 4 * out_features
    raise ValueError(f"quantization must be 4bit or 8bit, got {quantization!r}")


def _linear_types():
    from transformers.pytorch_utils import Conv1D

    return (torch.nn.Linear, Conv1D)


def _out_features(module) -> int:
    return module.out_features if isinstance(module, torch.nn.Linear) else module.nf  # Conv1D


def build_meta_model(config, task: str, dtype: torch.dtype):
    """The model of ``config`` on the meta device (no memory) with sdpa attention."""
    import transformers

    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{config.model_type} is an encoder-decoder model; estimate-memory covers decoder-only "
                         "models.")
    classes = {"causal-lm": transformers.AutoModelForCausalLM, "seq-cls": transformers.AutoModelForSequenceClassification}
    if task == "seq-cls":
        config.num_labels = 1
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = getattr(config, "eos_token_id", None) or 0
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = classes[task].from_config(config, dtype=dtype, attn_implementation="sdpa")
        except ValueError as err:
            if "sdpa" not in str(err):
                raise
            model = classes[task].from_config(config, dtype=dtype)  # an architecture without sdpa
    return model


def _quantized_modules(model) -> dict[int, torch.nn.Module]:
    """The modules transformers' bitsandbytes quantizer would replace, by id (see ``get_keys_to_not_convert``)."""
    from transformers.quantizers.base import get_keys_to_not_convert

    keep = set(get_keys_to_not_convert(model))
    return {id(m): m for name, m in model.named_modules()
            if isinstance(m, _linear_types()) and name not in keep and name.split(".")[-1] not in keep}


def _decoder_layers(model) -> torch.nn.ModuleList:
    layers = getattr(model.config, "num_hidden_layers", None)
    found = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == layers]
    if not found:
        raise ValueError(f"could not find the {layers} decoder layers of {type(model).__name__}.")
    return max(found, key=lambda m: sum(p.numel() for p in m.parameters()))


def _add_lora(model, lora: LoraSpec, task: str):
    import peft

    task_type = "SEQ_CLS" if task == "seq-cls" else "CAUSAL_LM"
    config = peft.LoraConfig(task_type=task_type, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=lora.targets, bias="none")
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices from the libraries, not about this estimate
        try:
            return peft.get_peft_model(model, config)
        except ValueError as err:
            raise ValueError(f"--lora: {str(err).splitlines()[0]}") from None


class _FlashAttention(torch.autograd.Function):
    """Stands in for sdpa while tracing: saves what the flash and memory-efficient kernels save (q, k, v, the
    output and a float32 log-sum-exp per query), not the attention matrix the math kernel would keep."""

    @staticmethod
    def forward(ctx, query, key, value):
        out = query.new_empty(query.shape[:-1] + value.shape[-1:])
        lse = query.new_empty(query.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(query, key, value, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - never run (meta tensors)
        raise NotImplementedError


class _Int8Linear(torch.autograd.Function):
    """Stands in for bitsandbytes' ``MatMul8bitLt`` while tracing: it keeps the layer input for the backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, conv1d):
        ctx.save_for_backward(x)
        if conv1d:  # GPT-2's Conv1D keeps its weight as [in, out]
            return x @ weight if bias is None else x @ weight + bias
        return torch.nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover
        raise NotImplementedError


@contextlib.contextmanager
def _patched_sdpa():
    original = torch.nn.functional.scaled_dot_product_attention

    def sdpa(query, key, value, *args, **kwargs):
        return _FlashAttention.apply(query, key, value)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


@dataclass
class ActivationTrace:
    layers: int  # bytes per token saved by all decoder layers together
    layer_max: int  # bytes per token saved by the layer that saves the most
    other: int  # bytes per token saved outside the layers (embeddings, final norm)
    nograd: int = 0  # bytes per token of the peak of live tensors in a forward without gradients


class _LiveTensors(TorchDispatchMode):
    """Tracks the bytes of the tensors the ops under it create, alive at once (a storage counts while any tensor
    on it lives), and their peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.refs, self.size = {}, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                key = tensor.untyped_storage()._cdata
                if key not in self.refs:
                    if key in given:
                        continue  # a view of a tensor made elsewhere (a weight, the input)
                    self.refs[key], self.size[key] = 0, tensor.untyped_storage().nbytes()
                    self.live += self.size[key]
                    self.peak = max(self.peak, self.live)
                self.refs[key] += 1
                weakref.finalize(tensor, self._drop, key)
        return out

    def _drop(self, key):
        self.refs[key] -= 1
        if not self.refs[key]:
            del self.refs[key]
            self.live -= self.size.pop(key)


@contextlib.contextmanager
def _meta_forward(model, int8_modules=()):
    """``run(tokens)``: one forward of ``model`` (a meta model, possibly with LoRA) over one padded row, with sdpa
    as a GPU runs it and bitsandbytes' 8-bit layers emulated."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(inner, inner.base_model_prefix, inner)
    for module in int8_modules:
        conv1d = not isinstance(module, torch.nn.Linear)
        module.forward = lambda x, m=module, c=conv1d: _Int8Linear.apply(x, m.weight, m.bias, c)

    def run(tokens: int):
        ids = torch.zeros(1, tokens, dtype=torch.long, device="meta")
        mask = torch.ones(1, 1, tokens, tokens, dtype=torch.bool, device="meta")  # a padded batch: a 4D mask
        backbone(input_ids=ids, attention_mask=mask, use_cache=False)

    try:
        with _patched_sdpa(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield run
    finally:
        for module in int8_modules:
            del module.forward


def trace_activations(model, int8_modules=(), tokens: int = 16) -> ActivationTrace:
    """Bytes per token that autograd saves for the backward, in and outside the decoder layers, from one forward
    of ``model`` (a meta model, possibly with LoRA) over one padded row of ``tokens`` tokens; and the peak of live
    tensors per token of the same forward without gradients (a reference forward, a prefill)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = _decoder_layers(inner)
    params = {id(p) for p in model.parameters()}
    owner, saved = ["other"], {}

    def pack(tensor):
        base = tensor if tensor._base is None else tensor._base
        if id(base) not in params and id(tensor) not in params and id(base) not in saved:
            saved[id(base)] = (owner[0], base.numel() * base.element_size(), base)
        return tensor

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(lambda *_, i=i: owner.__setitem__(0, i)))
        handles.append(layer.register_forward_hook(lambda *_: owner.__setitem__(0, "other")))
    live = _LiveTensors()
    try:
        with _meta_forward(model, int8_modules) as run:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                run(tokens)
            with torch.no_grad(), live:
                run(tokens)
    finally:
        for h in handles:
            h.remove()
    per_layer = [0] * len(layers)
    other = 0
    for who, nbytes, _ in saved.values():
        if who == "other":
            other += nbytes
        else:
            per_layer[who] += nbytes
    return ActivationTrace(sum(per_layer) // tokens, max(per_layer) // tokens, other // tokens, live.peak // tokens)


# ---- the estimate -------------------------------------------------------------------------------------------
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _bytes_of(dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()


def estimate_memory(model, method: str = "sft", *, lora: LoraSpec | list[str] | str | None = None,
                    quantization: str = "none", per_device_train_batch_size: int = 1, max_length: int = 1024,
                    max_prompt_length: int | None = None, max_completion_length: int | None = None,
                    num_generations: int | None = None, dtype: str = "bfloat16", mixed_precision: str = "no",
                    gradient_checkpointing: bool = False, gradient_accumulation_steps: int = 1,
                    reference: str = "auto", kbit_float32: bool = True, device_memory: str | int | None = None,
                    margin: float = DEFAULT_MARGIN, device: str = "cuda") -> MemoryEstimate:
    """Estimate the peak device memory of training ``model`` (a ``tiny:`` name, a directory, a config.json path,
    or a transformers config) with ``method``. Lengths are in tokens; ``per_device_train_batch_size`` counts rows
    (pairs for DPO and reward, completions for the online methods, as posttrain's trainers count them). See the
    module docstring for how each component is counted.

    ``kbit_float32``: a quantized base as posttrain prepares it (peft's ``prepare_model_for_kbit_training``
    upcasts the weights it did not quantize to float32, so the hidden states, activations and KV cache are float32
    too); False: those weights stay in ``dtype``, as transformers' bitsandbytes quantizer loads them.
    ``device``: ``cuda`` (default) or ``cpu``; torch's AdamW (the online trainers') takes its multi-tensor path,
    with a temporary the size of the optimizer state, only on an accelerator."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}.")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; choose from {', '.join(QUANTIZATIONS)}.")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}.")
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"unknown mixed precision {mixed_precision!r}; choose from {', '.join(MIXED_PRECISION)}.")
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference {reference!r}; choose from {', '.join(REFERENCES)}.")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be cuda or cpu, got {device!r}.")
    if isinstance(lora, (str, list)):
        lora = LoraSpec.parse(lora)
    if quantization != "none" and lora is None:
        raise ValueError(f"a {quantization} base cannot be trained itself: add --lora r=N to train an adapter on it.")
    if mixed_precision != "no" and (dtype != "float32" or quantization != "none"):
        raise ValueError("mixed precision (autocast) runs on float32 weights: use --dtype float32 without "
                         "quantization, or --mixed_precision no.")
    if reference == "adapter" and lora is None:
        raise ValueError("--reference adapter needs a LoRA policy (--lora r=N).")
    for flag, value in [("per_device_train_batch_size", per_device_train_batch_size), ("max_length", max_length),
                        ("gradient_accumulation_steps", gradient_accumulation_steps)]:
        if value is None or value < 1:
            raise ValueError(f"--{flag} must be >= 1, got {value}.")
    if not 0 <= margin < 1:
        raise ValueError(f"--margin must be in [0, 1), got {margin}.")
    device_bytes = parse_bytes(device_memory) if device_memory is not None else None
    online = method in ONLINE_METHODS

    # ---- shapes of a micro-batch ------------------------------------------------------------------------------
    B, L = per_device_train_batch_size, max_length
    G = num_generations or NUM_GENERATIONS.get(method, 1)
    if online:
        if method == "ppo" and G != 1:
            raise ValueError("PPO samples one completion per prompt: leave --num_generations out (or 1).")
        if method in ("grpo", "rloo") and G < 2:
            raise ValueError(f"{method} needs --num_generations >= 2 (the group is the baseline).")
        C = max_completion_length or 512
        P = max_prompt_length or (L - C)
        if P < 1:
            raise ValueError(f"no room for the prompt: --max_length {L} minus --max_completion_length {C}; give "
                             "--max_prompt_length (online methods train on prompt + completion).")
        gen_rows = B * gradient_accumulation_steps  # completions per generation (steps_per_generation's default)
        if gen_rows % G:
            raise ValueError(f"per_device_train_batch_size x gradient_accumulation_steps ({gen_rows}) must be a "
                             f"multiple of --num_generations ({G}): each process samples whole groups.")
        shared = method in ("grpo", "rloo") and B % G == 0  # posttrain's prefix sharing (its default, auto)
        rows, length = (B // G, P + G * C) if shared else (B, P + C)
        labelled = B * C
    else:
        if num_generations is not None or max_completion_length is not None:
            raise ValueError(f"--num_generations and --max_completion_length are for the online methods "
                             f"({', '.join(ONLINE_METHODS)}), not {method}.")
        P, C, gen_rows, shared = max_prompt_length, 0, 0, False
        if P is not None and not 0 < P < L:
            raise ValueError(f"--max_prompt_length ({P}) must be below --max_length ({L}).")
        rows = {"sft": B, "reward": 2 * B, "dpo": 2 * B, "kto": B}[method]
        length = L
        labelled = rows * (L - (P or 0) if method in ("dpo", "kto") else L)
    tokens = rows * length

    # ---- the model on the meta device ---------------------------------------------------------------------------
    name = model if isinstance(model, str) else getattr(model, "name_or_path", "") or type(model).__name__
    config = load_config(model) if isinstance(model, str) else copy.deepcopy(model)  # (a reward head edits it)
    task = "seq-cls" if method == "reward" else "causal-lm"
    upcast = quantization != "none" and kbit_float32
    meta = build_meta_model(config, task, torch.float32 if upcast else DTYPES[dtype])
    cfg = meta.config
    hidden, n_layers, heads = cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    vocab = cfg.vocab_size
    dw = _bytes_of(DTYPES[dtype])  # the weights' (and, without autocast or upcast, the computation's) bytes
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    da = 4 if upcast else _bytes_of(half) if half else dw  # bytes of a hidden-state element (activations, KV)
    quantized = _quantized_modules(meta) if quantization != "none" else {}
    weights = quantized_params = 0
    seen = set()
    for module in meta.modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue  # tied weights count once
            seen.add(id(p))
            if id(module) in quantized and pname == "weight":
                quantized_params += p.numel()
                weights += quantized_weight_bytes(p.numel(), _out_features(module), quantization)
            else:
                weights += p.numel() * p.element_size()
    n_params = sum(p.numel() for p in meta.parameters())
    linear_params = sum(m.weight.numel() for m in meta.modules() if isinstance(m, _linear_types()))
    largest_quantized = max((m.weight.numel() for m in quantized.values()), default=0)
    output_layer = meta.get_output_embeddings() if task == "causal-lm" else None
    head_params = output_layer.weight.numel() if output_layer is not None else 0
    head_bytes = output_layer.weight.element_size() if output_layer is not None else dw

    # ---- activations, traced on the model as it trains: offline trainers turn dropout off before adding LoRA
    # (its dropout stays), the online ones after
    from .models.loading import disable_dropout

    if not online:
        disable_dropout(meta)
    if lora is not None:
        meta.requires_grad_(False)
        policy = _add_lora(meta, lora, task)
        adapter = [(n, p) for n, p in policy.named_parameters() if p.requires_grad]
        lora_params = sum(p.numel() for _, p in adapter)
        lora_bytes = sum(p.numel() * p.element_size() for _, p in adapter)
        targets = sorted({n.split(".lora_A")[0].split(".")[-1] for n, _ in adapter if ".lora_A" in n})
    else:
        policy, lora_params, lora_bytes, targets = meta, 0, 0, []
    if online:
        disable_dropout(policy)
    int8 = list(quantized.values()) if quantization == "8bit" else []
    if half is not None:  # autocast: traced as the model in half precision (its matmuls' outputs are)
        policy.to(half)
    trace = trace_activations(policy, int8)

    # ---- trainable parameters, gradients, optimizer ---------------------------------------------------------------
    value_head = hidden + 1 if method == "ppo" else 0  # float32 Linear(hidden, 1)
    trainable = (lora_params if lora is not None else n_params) + value_head
    grad_bytes = (lora_bytes if lora is not None else n_params * dw) + value_head * 4
    optimizer_bytes = 2 * grad_bytes  # AdamW's two states, each in its parameter's dtype
    state_bytes = 4 if lora is not None else dw
    # offline trainers step transformers' default adamw_torch_fused (no temporaries); the online ones
    # torch.optim.AdamW, whose multi-tensor step on an accelerator makes a sqrt(exp_avg_sq) temporary per parameter
    step_temporaries = grad_bytes if online and device == "cuda" else 0

    # ---- reference ----------------------------------------------------------------------------------------------
    if reference == "auto":
        ref_kind = ("adapter" if lora is not None else "copy") if method in ("dpo", "kto", "ppo", "rloo") else "none"
    else:
        ref_kind = reference
    reference_bytes = weights if ref_kind == "copy" else 0  # (PPO copies the trunk, not its value head)

    # ---- activations ----------------------------------------------------------------------------------------------
    mask_shared = rows * length * length  # the boolean [rows, 1, L, L] mask, one for all layers
    mask_layer = rows * length * length * da  # the float bias sdpa makes of it, saved by every layer
    if gradient_checkpointing:
        layer_saved = tokens * (n_layers * hidden * da + trace.layer_max) + mask_shared + mask_layer
        act_note = (f"checkpointed: {n_layers} layer inputs of {hidden * da:,} B + one layer recomputed "
                    f"({format_bytes(trace.layer_max)}) per token")
    else:
        layer_saved = tokens * trace.layers + mask_shared + n_layers * mask_layer
        act_note = f"{format_bytes(trace.layers / n_layers)} per layer per token x {n_layers} layers"
    outside = tokens * trace.other
    if task == "causal-lm":
        outside += labelled * (hidden * da + 4 + 8 + 8)  # kept hidden states, log-normaliser, target, argmax
    else:
        outside += tokens * hidden * da  # the score head's input
    if method == "ppo":
        outside += tokens * hidden * 4  # the value head reads float32 hidden states
    activations = layer_saved + outside
    act_note += f", x {tokens:,} tokens ({rows} row{'s' * (rows > 1)} x {length})"
    masks = mask_shared + (1 if gradient_checkpointing else n_layers) * mask_layer
    if masks * 20 > activations:
        act_note += f"; attention masks {format_bytes(masks)} of it"

    # ---- logits ---------------------------------------------------------------------------------------------------
    from .losses.logprobs import _LOGIT_TRANSFORMS, CHUNK_BYTES

    chunk_rows = min(labelled, max(1, CHUNK_BYTES // (4 * vocab)))
    output_grad = 0
    if task != "causal-lm":
        logits_fwd = logits_bwd = rows * 8
        logits_note = "a sequence classifier: one score per row, no vocabulary logits"
    elif any(getattr(cfg, t, None) not in (None, 1, 1.0) for t in _LOGIT_TRANSFORMS):
        logits_fwd = labelled * vocab * (da + 4) + chunk_rows * vocab * 8
        logits_bwd = labelled * vocab * (da + 4)
        logits_note = (f"{cfg.model_type} transforms its logits, so posttrain builds them in full: {labelled:,} "
                       f"labelled tokens x {vocab:,}")
    else:
        logits_fwd = chunk_rows * vocab * (8 + (da if da != 4 else 0))
        cast_head = head_params * 4 if (head_bytes != 4 or da != 4) else 0  # the output weight in float32
        logits_bwd = chunk_rows * vocab * 4 + cast_head
        if lora is None:
            logits_bwd += head_params * 4  # the float32 accumulator of the output weight's gradient
            output_grad = head_params * head_bytes
        logits_note = (f"chunked: {chunk_rows:,} of {labelled:,} labelled tokens x {vocab:,} vocab in float32 at "
                       f"a time" + (" + the output weight in float32 (backward)" if cast_head else ""))
    logits_train = max(logits_fwd, logits_bwd + output_grad)
    # bitsandbytes dequantizes one weight at a time: 4-bit to its compute dtype, 8-bit (backward) to the input's
    dequant = largest_quantized * (dw if quantization == "4bit" else da)
    # a no-grad forward after the policy's (DPO's reference; KTO's KL and reference ones): one layer's intermediates
    nograd = max(tokens * trace.nograd + mask_layer, logits_fwd) + mask_shared if method in ("dpo", "kto") else 0

    # ---- generation -----------------------------------------------------------------------------------------------
    if online:
        kv_bytes = gen_rows * (P + C) * n_layers * 2 * kv_heads * head_dim * da
        step_logits = gen_rows * vocab * (da + 6 * 4)  # logits, a float32 copy, processors, softmax, log-softmax
        prompts = gen_rows // G
        prefill = prompts * P * trace.nograd + prompts * P * P * (1 + da)
        # a no-grad forward over the rollout: the reference's log-probs (and PPO's values and old log-probs)
        rollout_forward = (max(gen_rows * (P + C) * trace.nograd + gen_rows * (P + C) ** 2 * da, logits_fwd)
                           + gen_rows * (P + C) ** 2 if ref_kind != "none" or method == "ppo" else 0)
        kv_note = (f"{gen_rows} row{'s' * (gen_rows > 1)} x ({P} + {C}) tokens x {n_layers} layers x 2 x {kv_heads} "
                   f"kv heads x {head_dim} x {da} B")
    else:
        kv_bytes = step_logits = prefill = rollout_forward = 0
        kv_note = "no generation"

    # ---- components -----------------------------------------------------------------------------------------------
    if quantization == "none":
        weights_note = f"{_count(n_params)} params x {dw} B ({dtype})"
        if mixed_precision != "no":
            weights_note += ": the float32 master copy"
    else:
        kind = "NF4, 64-weight blocks, double quant" if quantization == "4bit" else "LLM.int8 + row scales"
        bits = quantized_weight_bytes(quantized_params, 0, quantization) * 8 / quantized_params
        rest_dtype = "float32 (prepare_model_for_kbit_training)" if upcast else dtype
        weights_note = (f"{_count(quantized_params)} quantized ({kind}: {bits:.3g} bits) + "
                        f"{_count(n_params - quantized_params)} in {rest_dtype}")
    components = {}

    def add(key, nbytes, note):
        components[key] = Component(key, int(nbytes), note)

    add("weights", weights, weights_note)
    if mixed_precision != "no":
        add("autocast copies", linear_params * da, f"{mixed_precision} copies of the linear weights, forward to backward")
    add("LoRA adapters", lora_bytes, f"r={lora.r} on {', '.join(targets)}: {_count(lora_params)} params x 4 B "
        f"(float32)" if lora is not None else "full fine-tuning")
    trained = f"{_count(lora_params)} adapter" if lora is not None else f"all {_count(n_params)}"
    add("gradients", grad_bytes, f"{trained} parameters{' + value head' if value_head else ''}, in their dtype; "
        "freed after every step")
    add("optimizer state", optimizer_bytes, f"AdamW exp_avg + exp_avg_sq: 2 x {_count(trainable)} x {state_bytes} B")
    ref_note = {"copy": "a frozen copy of the weights", "adapter": "the base with the adapter off: no copy",
                "none": "none"}[ref_kind]
    if ref_kind == "none" and reference == "auto":
        ref_note += {"grpo": " (GRPO's default beta=0)"}.get(method, f" ({method} keeps none)")
    if method == "ppo":
        ref_note += "; + the value head Linear(hidden, 1), float32"
    add("reference model", reference_bytes + value_head * 4, ref_note)
    add("activations", activations, act_note)
    gen_note = f"; generation: {gen_rows} x {vocab:,} per step ({format_bytes(step_logits)})" if online else ""
    add("logits", logits_train, logits_note + gen_note)
    add("KV cache", kv_bytes, kv_note)

    # ---- phases ---------------------------------------------------------------------------------------------------
    resident = {"weights": weights, "LoRA adapters": lora_bytes, "reference model": reference_bytes + value_head * 4,
                "optimizer state": optimizer_bytes}
    autocast = {"autocast copies": components["autocast copies"].bytes} if mixed_precision != "no" else {}
    backward = {**resident, **autocast, "activations": activations,
                "gradients": grad_bytes if gradient_accumulation_steps > 1 else 0}
    # the largest transient on top of the saved activations when the backward starts (named in the phase)
    transients = {"logits": logits_train, "reference forward": nograd, "dequantized weight": dequant}
    working = max(transients, key=transients.get)
    if working == "logits":
        first_grad = logits_bwd + output_grad >= logits_fwd
        backward["logits"] = logits_bwd if first_grad else logits_fwd
        if first_grad and gradient_accumulation_steps == 1:
            backward["gradients"] = output_grad  # the output layer's gradient comes first in the backward
    else:
        backward[working] = transients[working]
    phases = [Phase("backward start", backward),
              Phase("optimizer step", {**resident, "gradients": grad_bytes, "AdamW temporaries": step_temporaries})]
    if online:
        biggest = "logits" if step_logits >= prefill else "prefill"
        phases.append(Phase("generation", {**resident, **autocast, "KV cache": kv_bytes,
                                           biggest: max(step_logits, prefill)}))
        if rollout_forward:  # after sampling (the KV cache is gone): reference log-probs, PPO's values
            phases.append(Phase("rollout scoring", {**resident, **autocast, "reference forward": rollout_forward}))

    # ---- summary --------------------------------------------------------------------------------------------------
    arch = (f"{cfg.model_type}, {_count(n_params)} parameters: {n_layers} layers, hidden {hidden}, {heads} heads"
            f"{f' ({kv_heads} kv)' if kv_heads != heads else ''}, vocab {vocab:,}")
    how = "full fine-tuning" if lora is None else f"LoRA r={lora.r} ({_count(lora_params)} trainable)"
    base = {"none": dtype, "8bit": f"8-bit base (LLM.int8), {dtype}", "4bit": f"4-bit base (NF4), compute {dtype}"}
    precision = base[quantization] + (f" + {mixed_precision} autocast" if mixed_precision != "no" else "")
    if online:
        shape = (f"micro-batch {B} completion{'s' * (B > 1)} of {P} prompt + {C} completion tokens"
                 + (f" ({rows} shared-prompt row{'s' * (rows > 1)} of {length})" if shared else "")
                 + f"; generation batch {gen_rows}" + (f" ({G} per prompt)" if G > 1 else ""))
    else:
        shape = f"micro-batch {rows} row{'s' * (rows > 1)} x {length} tokens" + (" (chosen + rejected)" if rows == 2 * B else "")
    shape += f"; gradient checkpointing {'on' if gradient_checkpointing else 'off'}"
    if gradient_accumulation_steps > 1:
        shape += f"; {gradient_accumulation_steps} micro-batches per step"
    summary = [arch, f"{method}, {how}, {precision}", shape]
    details = dict(rows=rows, length=length, tokens=tokens, labelled=labelled, n_params=n_params, trainable=trainable,
                   lora_params=lora_params, quantized_params=quantized_params, trace=trace,
                   gen_rows=gen_rows, prompt=P, completion=C, hidden=hidden, layers=n_layers, kv_heads=kv_heads,
                   head_dim=head_dim, vocab=vocab, activation_bytes=da, weight_bytes=dw, reference=ref_kind,
                   logits_fwd=logits_fwd, logits_bwd=logits_bwd, output_grad=output_grad, dequant=dequant,
                   nograd=nograd, step_logits=step_logits, prefill=prefill, rollout_forward=rollout_forward,
                   step_temporaries=step_temporaries)
    return MemoryEstimate(name, method, summary, components, phases, device_bytes, margin, details)


# ---- the command ----------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="posttrain estimate-memory", description=(
        "Estimate the peak GPU memory of a posttrain run before starting it: weights (quantized or not), LoRA "
        "adapters, gradients, AdamW state, reference model, activations, logits and KV cache, the phase of the "
        "step where they peak, and whether that fits --device_memory. Nothing is downloaded or allocated: the "
        "model is built from its config on the meta device."))
    parser.add_argument("--model", required=True, help=(
        "The model: a tiny: name (tiny:llama-50m, ...), a model directory, a config.json file (e.g. "
        "examples/configs/gpt-neox-20b.json) or a hub name whose config is cached."))
    parser.add_argument("--method", default="sft", choices=METHODS, help=(
        "The posttrain command: offline sft, reward, dpo, kto; online ppo, grpo, rloo, rest (these also "
        "generate: KV cache and per-step logits). Default: sft."))
    parser.add_argument("--lora", nargs="+", default=None, metavar="KEY=VALUE", help=(
        "Train a LoRA adapter instead of all weights: r=16 [alpha=32] [dropout=0.05] [targets=q_proj,v_proj | "
        "targets=all-linear]. Without targets, peft's default modules for the architecture. Alpha does not "
        "change memory. Default: full fine-tuning."))
    parser.add_argument("--quantization", default="none", choices=QUANTIZATIONS, help=(
        "Quantize the base with bitsandbytes: 8bit (LLM.int8: 1 byte a weight + row scales) or 4bit (NF4 with "
        "double quantization: ~4.13 bits a weight). Embeddings, norms and the output layer stay unquantized (in "
        "float32 by default, see --kbit_float32). "
        "Needs --lora. Default: none."))
    parser.add_argument("--per_device_train_batch_size", type=_positive, default=1, metavar="N", help=(
        "Rows per micro-batch as posttrain counts them: sequences (sft), pairs (dpo, reward: 2N sequences), "
        "rows (kto), completions (ppo, grpo, rloo, rest). Default: 1."))
    parser.add_argument("--max_length", type=_positive, default=1024, metavar="L", help=(
        "Tokens per sequence (prompt + answer); every row is assumed this long. For online methods, the default "
        "prompt length is max_length - max_completion_length. Default: 1024."))
    parser.add_argument("--max_prompt_length", type=_positive, default=None, metavar="P", help=(
        "Prompt tokens. Online methods: the prompt length (default max_length - max_completion_length). DPO/KTO: "
        "only the other max_length - P tokens are labelled (default: all)."))
    parser.add_argument("--max_completion_length", type=_positive, default=None, metavar="C", help=(
        "Online methods: completion tokens generated and trained on (default 512, posttrain's)."))
    parser.add_argument("--num_generations", type=_positive, default=None, metavar="G", help=(
        "Online methods: completions per prompt (defaults: grpo 8, rloo 8, rest 4; ppo 1). GRPO/RLOO share each "
        "prompt across its group in the training forward when the batch holds whole groups, as posttrain does."))
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES, help=(
        "dtype of the weights (posttrain's --dtype) and, without --mixed_precision, of the computation. "
        "Default: bfloat16."))
    parser.add_argument("--mixed_precision", default="no", choices=MIXED_PRECISION, help=(
        "bf16/fp16 autocast on float32 weights (posttrain's --bf16/--fp16, its default on a bf16 GPU): float32 "
        "master weights, gradients and AdamW state, plus half-precision weight copies during the step. Needs "
        "--dtype float32. Default: no."))
    parser.add_argument("--gradient_checkpointing", type=_bool, default=False, metavar="true|false", help=(
        "Recompute activations in the backward: each layer keeps only its input. Default: false."))
    parser.add_argument("--gradient_accumulation_steps", type=_positive, default=1, metavar="N", help=(
        "Micro-batches per optimizer step: with more than one, gradients stay alive during the next forwards "
        "(and online methods generate N micro-batches at once). Default: 1."))
    parser.add_argument("--kbit_float32", type=_bool, default=True, metavar="true|false", help=(
        "With --quantization: the weights left unquantized (embeddings, output layer, norms, biases) are float32, "
        "as peft's prepare_model_for_kbit_training (which posttrain runs on a quantized base) leaves them, so "
        "hidden states, activations and the KV cache are float32 too. false: they stay in --dtype, as "
        "transformers' bitsandbytes quantizer loads them. Default: true."))
    parser.add_argument("--reference", default="auto", choices=REFERENCES, help=(
        "The reference model: auto (posttrain's default: none for sft, reward, rest and grpo with beta 0; the "
        "adapter-off base with LoRA; else a frozen copy), copy, adapter, or none (e.g. precomputed reference "
        "log-probs, reference-free losses). Default: auto."))
    parser.add_argument("--device_memory", default=None, metavar="SIZE", help=(
        "Memory of one device, e.g. 24GiB, 80GB, 16G (G = GiB): the estimate then says whether it fits. "
        "Default: no verdict."))
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN, metavar="FRACTION", help=(
        "Fraction of --device_memory kept free for the CUDA context, cuBLAS workspaces and allocator "
        "fragmentation, which the estimate does not count. Default: 0.10."))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        lora = LoraSpec.parse(args.lora) if args.lora else None
        estimate = estimate_memory(
            args.model, args.method, lora=lora, quantization=args.quantization,
            per_device_train_batch_size=args.per_device_train_batch_size, max_length=args.max_length,
            max_prompt_length=args.max_prompt_length, max_completion_length=args.max_completion_length,
            num_generations=args.num_generations, dtype=args.dtype, mixed_precision=args.mixed_precision,
            gradient_checkpointing=args.gradient_checkpointing,
            gradient_accumulation_steps=args.gradient_accumulation_steps, reference=args.reference,
            kbit_float32=args.kbit_float32,
            device_memory=args.device_memory, margin=args.margin)
    except ValueError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    print(estimate.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
