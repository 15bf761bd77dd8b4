"""Configuration shared by every trainer and the CLI: flat dataclasses whose fields carry help text,
so each field is a CLI flag and a YAML key for free (transformers.HfArgumentParser).

``ModelArguments`` mirrors TRL's ``ModelConfig`` and ``DataArguments`` TRL's ``ScriptArguments``: the
same names, meanings and defaults, so a ``trl <cmd>`` command line or YAML runs as ``posttrain <cmd>``.
posttrain's older spellings (``--model``, ``--dataset``, ``--use_lora``) stay as aliases."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import TrainingArguments

from .errors import ConfigError

# LoRA task type per posttrain task, when --lora_task_type is not given.
_LORA_TASK_TYPES = {"causal-lm": "CAUSAL_LM", "seq-cls": "SEQ_CLS", "seq2seq": "SEQ_2_SEQ_LM"}


# ---- range checks: every config's numbers are checked in __post_init__, before any work ----------------
Rule = tuple[Callable[[Any], bool], str]  # (test, the valid range in words)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_finite(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def rule(test: Callable[[Any], bool], valid: str, none: str | None = None) -> Rule:
    """A range rule: ``test(value)`` holds; None passes too when ``none`` says what None means."""
    def check(v) -> bool:
        if v is None:
            return none is not None
        try:
            return bool(test(v))
        except (TypeError, ValueError):
            return False

    return check, valid + (f", or None ({none})" if none else "")


def integer(low: int, none: str | None = None, note: str = "") -> Rule:
    return rule(lambda v: _is_int(v) and v >= low, f"an integer >= {low}{note}", none)


def positive(none: str | None = None, note: str = "") -> Rule:
    return rule(lambda v: _is_finite(v) and v > 0, f"a finite number > 0{note}", none)


def non_negative(none: str | None = None, note: str = "") -> Rule:
    return rule(lambda v: _is_finite(v) and v >= 0, f"a finite number >= 0{note}", none)


def interval(low: float, high: float, closed: str = "[]", none: str | None = None, note: str = "") -> Rule:
    """A number in [low, high] (``closed`` "[)", "(]" or "()" for open ends)."""
    def test(v):
        return (_is_finite(v) and (v >= low if closed[0] == "[" else v > low)
                and (v <= high if closed[1] == "]" else v < high))

    return rule(test, f"a number in {closed[0]}{low:g}, {high:g}{closed[1]}{note}", none)


SEED = rule(lambda v: _is_int(v) and 0 <= v < 2**32, "an integer in [0, 2**32 - 1]")


def check_ranges(config, rules: dict[str, Rule]) -> None:
    """Raise a ConfigError naming the first field of ``rules`` whose value is out of its range (fields the config
    lacks are skipped)."""
    for name, (test, valid) in rules.items():
        if hasattr(config, name) and not test(getattr(config, name)):
            raise ConfigError(f"{name}={getattr(config, name)!r} is out of range: it must be {valid}.")


def config_rules(config) -> dict[str, Rule]:
    """The range rules of a config: the ``RANGES`` of its classes, a subclass's rule replacing its base's."""
    rules: dict[str, Rule] = {}
    for cls in reversed(type(config).__mro__):
        rules.update(vars(cls).get("RANGES", {}))
    return rules


@dataclass
class ModelArguments:
    """Which model to start from, how to load it, and whether to train a LoRA adapter on it (TRL's
    ``ModelConfig``)."""

    model_name_or_path: str = field(default="tiny:llama", metadata={
        "aliases": ["--model"],
        "help": "Model to start from (--model works too): 'tiny:<arch>[-5m|-50m]' (built offline, arch in "
                "llama/gpt2/qwen2/t5), a hub name, or a local directory saved with save_pretrained. "
                "Default 'tiny:llama' (TRL has no default)."})
    model_revision: str = field(default="main", metadata={
        "help": "Hub model version to use: a branch name, a tag name or a commit id (ignored for local "
                "directories and tiny models)."})
    dtype: str | None = field(default="float32", metadata={
        "help": "dtype to load the weights in: float32 (default, as TRL), bfloat16, float16, or auto (the "
                "checkpoint's own dtype). Mixed-precision training is --bf16/--fp16."})
    attn_implementation: str | None = field(default=None, metadata={
        "help": "Attention implementation: eager, sdpa, flash_attention_2, ... (default: transformers' "
                "choice, sdpa where available). flash_attention_2 needs the flash-attn package and a GPU."})
    use_peft: bool = field(default=False, metadata={
        "aliases": ["--use_lora"],
        "help": "Train a LoRA adapter instead of all weights (--use_lora works too)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={
        "help": "LoRA scaling numerator: scale = alpha / r (alpha / sqrt(r) with --use_rslora)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "Module names to adapt: a list (--lora_target_modules q_proj v_proj; a YAML list), a "
                "comma-separated string ('q_proj,v_proj'), or 'all-linear'. Default: peft's choice for the "
                "architecture (e.g. q_proj and v_proj for Llama), as TRL."})
    lora_target_parameters: list[str] | None = field(default=None, metadata={
        "help": "Parameter names to adapt directly (peft's target_parameters, e.g. MoE expert weights)."})
    lora_modules_to_save: list[str] | None = field(default=None, metadata={
        "help": "Modules to unfreeze and train fully beside the adapter (e.g. lm_head embed_tokens)."})
    lora_task_type: str | None = field(default=None, metadata={
        "help": "peft task type: CAUSAL_LM, SEQ_CLS, SEQ_2_SEQ_LM. Default: the command's (SEQ_CLS for "
                "reward, SEQ_2_SEQ_LM for encoder-decoder models, CAUSAL_LM otherwise); TRL defaults to "
                "CAUSAL_LM and asks for SEQ_CLS for reward modeling."})
    use_rslora: bool = field(default=False, metadata={
        "help": "Rank-stabilised LoRA: scale the adapter by lora_alpha / sqrt(r) instead of lora_alpha / r."})
    use_dora: bool = field(default=False, metadata={
        "help": "DoRA: split each adapted weight's update into magnitude and direction (LoRA learns the "
                "direction). Often better at low ranks; slower than LoRA."})
    load_in_8bit: bool = field(default=False, metadata={
        "help": "Load the base model in 8 bits (bitsandbytes LLM.int8) and train a LoRA adapter on it (needs "
                "--use_peft). The reference model is the same base with the adapter off: one copy. Works on CUDA "
                "GPUs and, with bitsandbytes >= 0.49, on CPUs."})
    load_in_4bit: bool = field(default=False, metadata={
        "help": "Load the base model in 4 bits (bitsandbytes; QLoRA with --bnb_4bit_quant_type nf4 and "
                "--use_bnb_nested_quant) and train a LoRA adapter on it (needs --use_peft). Computes in --dtype "
                "(float32 if unset)."})
    bnb_4bit_quant_type: str = field(default="nf4", metadata={
        "help": "4-bit quantization type with --load_in_4bit: nf4 (QLoRA's NormalFloat, default) or fp4."})
    use_bnb_nested_quant: bool = field(default=False, metadata={
        "help": "Double quantization with --load_in_4bit: quantize the quantization constants too (QLoRA; "
                "about 0.4 bits per parameter less)."})
    bnb_4bit_quant_storage: str | None = field(default=None, metadata={
        "help": "Storage dtype of packed 4-bit weights (default uint8; bfloat16 to shard them with FSDP)."})

    RANGES = {"lora_r": integer(1), "lora_alpha": positive(), "lora_dropout": interval(0, 1, "[)")}

    def __post_init__(self):
        check_ranges(self, self.RANGES)
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("--load_in_4bit and --load_in_8bit are exclusive: pick one.")
        if (self.load_in_4bit or self.load_in_8bit) and not self.use_peft:
            flag = "load_in_4bit" if self.load_in_4bit else "load_in_8bit"
            raise ValueError(f"--{flag}: a quantized base trains only through a LoRA adapter; add --use_peft "
                             "(and --lora_r, --lora_target_modules as you like).")
        if self.bnb_4bit_quant_type not in ("nf4", "fp4"):
            raise ValueError(f"--bnb_4bit_quant_type must be nf4 or fp4, got {self.bnb_4bit_quant_type!r}.")
        from .models.loading import resolve_dtype

        resolve_dtype(self.dtype)  # an unknown name fails here, naming the valid ones
        if self.bnb_4bit_quant_storage is not None:
            resolve_dtype(self.bnb_4bit_quant_storage)
        self.lora_target_modules = _module_list(self.lora_target_modules)
        self.lora_target_parameters = _module_list(self.lora_target_parameters)
        self.lora_modules_to_save = _module_list(self.lora_modules_to_save)

    def quantization_config(self):
        """A ``transformers.BitsAndBytesConfig`` for --load_in_4bit / --load_in_8bit (TRL's
        ``get_quantization_config``), else None."""
        if not (self.load_in_4bit or self.load_in_8bit):
            return None
        from transformers import BitsAndBytesConfig

        from .models.loading import resolve_dtype

        if self.load_in_8bit:
            return BitsAndBytesConfig(load_in_8bit=True)
        compute = resolve_dtype(self.dtype)
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=self.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=self.use_bnb_nested_quant,
            bnb_4bit_compute_dtype=compute if isinstance(compute, torch.dtype) else torch.float32,
            bnb_4bit_quant_storage=resolve_dtype(self.bnb_4bit_quant_storage) or torch.uint8)

    def model_init_kwargs(self, trust_remote_code: bool = False) -> dict:
        """Keyword arguments for ``load_model`` (and ``from_pretrained``): dtype, revision, remote code (a
        field of the training config, as in TRL), attention implementation, quantization."""
        quantization = self.quantization_config()
        return dict(dtype=self.dtype, revision=self.model_revision, trust_remote_code=trust_remote_code,
                    attn_implementation=self.attn_implementation,
                    **({"quantization_config": quantization} if quantization is not None else {}))

    def peft_config(self, task: str = "causal-lm"):
        """A ``peft.LoraConfig`` when ``use_peft`` is set, else None. ``task`` is posttrain's task name
        (causal-lm, seq-cls, seq2seq); it picks the task type unless ``lora_task_type`` is given."""
        if not self.use_peft:
            return None
        import peft

        extra = {"target_parameters": self.lora_target_parameters} if self.lora_target_parameters else {}
        return peft.LoraConfig(
            task_type=self.lora_task_type or _LORA_TASK_TYPES.get(task, task), r=self.lora_r,
            lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout, target_modules=self.lora_target_modules,
            bias="none", use_rslora=self.use_rslora, use_dora=self.use_dora,
            modules_to_save=self.lora_modules_to_save, **extra)


def _module_list(value):
    """Module names as peft takes them: None, a special string like 'all-linear', or a list. Accepts a
    list, a comma-separated string, or a one-item list of either (what ``--flag a,b`` parses to)."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [p for v in value for p in str(v).split(",")]
    items = [i.strip() for i in items if i.strip()]
    if not items:
        return None
    return items[0] if len(items) == 1 and items[0] == "all-linear" else items


@dataclass
class DataArguments:
    """Where the training (and optional evaluation) rows come from (TRL's ``ScriptArguments``)."""

    dataset_name: str | None = field(default=None, metadata={
        "aliases": ["--dataset"],
        "help": "Training data (required; --dataset works too): a .jsonl, .json, .csv or .parquet file; a "
                "directory (a dataset saved with datasets' save_to_disk, or a folder of such files, split by "
                "file name like train.jsonl/test.jsonl); or a hub dataset name when the hub is reachable."})
    dataset_config: str | None = field(default=None, metadata={
        "help": "Configuration name of a hub or folder dataset (the `name` of datasets.load_dataset)."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(default="test", metadata={
        "help": "Split to evaluate on, when the dataset has it and evaluation is on (--eval_strategy other "
                "than 'no'), as in TRL's scripts. --eval_dataset or --eval_fraction take precedence."})
    dataset_streaming: bool = field(default=False, metadata={
        "help": "Stream the dataset instead of loading it. Not supported yet: setting it is an error."})
    eval_dataset: str | None = field(default=None, metadata={
        "help": "Evaluation data, any form --dataset_name takes (its --dataset_test_split split if it has "
                "several); turns evaluation on. Or use --eval_fraction."})
    eval_fraction: float = field(default=0.0, metadata={
        "help": "Hold out this fraction of the training split for evaluation (seeded by --seed) when no "
                "--eval_dataset is given; turns evaluation on."})

    def __post_init__(self):
        check_ranges(self, {"eval_fraction": interval(0, 1, "[)", note=" (0: no held-out evaluation rows)")})
        if self.dataset_streaming:
            raise ValueError("--dataset_streaming: streaming datasets are not supported yet. Drop the flag; the "
                             "dataset is loaded (memory-mapped by datasets) instead.")


# ---- TRL fields posttrain accepts but does not implement ---------------------------------------------
NOT_IMPLEMENTED = "Not implemented in posttrain"


def unimplemented(default, what: str):
    """A TRL config field kept so TRL configs and scripts load: at its default it changes nothing, any
    other value raises (see :func:`refuse_unimplemented`, which finds these fields by their help text)
    instead of being silently ignored."""
    return field(default=default, metadata={
        "help": f"TRL: {what} {NOT_IMPLEMENTED}: only the default ({default!r}) is accepted."})


def refuse_unimplemented(config) -> None:
    for f in dataclasses.fields(config):
        if NOT_IMPLEMENTED in f.metadata.get("help", "") and getattr(config, f.name) != f.default:
            raise ValueError(f"{type(config).__name__}.{f.name}={getattr(config, f.name)!r}: this TRL option is not "
                             f"implemented in posttrain. Leave it at its default ({f.default!r}) or use TRL for it.")


def check_padding(config) -> None:
    """TRL's ``pad_to_multiple_of`` (only its no-padding values are supported) and ``padding_free``
    (which TRL 1.16 itself turns off with a warning)."""
    if config.pad_to_multiple_of not in ("auto", None, "none", "None", "null"):
        raise ValueError(f"pad_to_multiple_of={config.pad_to_multiple_of!r} is not implemented for "
                         f"{type(config).__name__}: leave it at 'auto' (no padding off Neuron, as TRL) or None.")
    config.pad_to_multiple_of = None
    if getattr(config, "padding_free", False):
        warnings.warn("padding_free=True is unavailable in TRL 1.16's DPO and falls back to padding; posttrain does "
                      "the same. For long shared prompts use prefix_sharing=True instead.", stacklevel=3)


BF16_HELP = ("Mixed precision in bfloat16. Default None: on where it is fast -- a CUDA GPU that supports bf16 -- "
             "and off on CPU (TRL's None means on unless --fp16, CPU included, where bf16 autocast is slow). "
             "--bf16 true/false forces it.")


GRADIENT_CHECKPOINTING_HELP = (
    "Recompute activations in the backward pass: less memory, about 20-30% slower. Default off (posttrain "
    "picks speed); TRL defaults to True: pass --gradient_checkpointing true for TRL's behaviour.")


@dataclass
class SharedConfig:
    """What every posttrain config, offline and online, sets on top of TrainingArguments, with TRL's meanings
    (listed first in a config's bases so these defaults win). Each config's ``__post_init__`` calls
    :meth:`resolve_shared` before TrainingArguments validates."""

    save_total_limit: int | None = field(default=2, metadata={
        "help": "Keep at most this many checkpoints in output_dir (oldest deleted first). Default 2 so a long "
                "run cannot fill the disk; TRL keeps all: save_total_limit=None (YAML: null) for that."})
    bf16: bool | None = field(default=None, metadata={"help": BF16_HELP})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Take over an output_dir whose lock another live run holds (posttrain lets one run write to a "
                "directory at a time; a lock left by a dead run is taken over anyway, with a warning)."})
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": GRADIENT_CHECKPOINTING_HELP})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Allow a hub model or tokenizer given by name to run its own Python code (custom "
                "architectures). Only for repositories you trust."})
    model_init_kwargs: dict[str, Any] | str | None = field(default=None, metadata={
        "help": "Keyword arguments for from_pretrained (e.g. {\"dtype\": \"bfloat16\"}) when the model is given "
                "by name; a JSON string on the command line."})

    # The ranges of TrainingArguments' fields and of the fields several configs share (a config lacking one skips
    # it); each config class adds its own in RANGES. Checked first thing in __post_init__ (resolve_shared).
    RANGES = {
        "max_steps": rule(lambda v: _is_int(v) and (v == -1 or v >= 1),
                          "-1 (train for num_train_epochs, as in transformers) or an integer >= 1"),
        "num_train_epochs": positive(),
        "per_device_train_batch_size": integer(1),
        "per_device_eval_batch_size": integer(1),
        "gradient_accumulation_steps": integer(1),
        "learning_rate": positive(),
        "warmup_steps": non_negative(note=" (below 1: a fraction of the training steps)"),
        "weight_decay": non_negative(),
        "adam_beta1": interval(0, 1, "[)"),
        "adam_beta2": interval(0, 1, "[)"),
        "adam_epsilon": non_negative(),
        "max_grad_norm": non_negative(none="no clipping", note=" (0: no clipping)"),
        "seed": SEED,
        "data_seed": rule(SEED[0], SEED[1], none="the seed"),
        "logging_steps": positive(note=" (below 1: a fraction of the training steps)"),
        "eval_steps": positive(none="logging_steps", note=" (below 1: a fraction of the training steps)"),
        "save_steps": positive(note=" (below 1: a fraction of the training steps)"),
        "dataloader_num_workers": integer(0),
        "dataset_num_proc": integer(1, none="this process only"),
        "max_length": integer(1, none="no limit"),
        "max_prompt_length": integer(1, none="no limit"),
        "max_completion_length": integer(1, none="no limit"),
    }

    def resolve_shared(self) -> None:
        """The value ranges checked (see ``RANGES``; a ConfigError names the field, its value and the range),
        TRL's ``bf16=None`` default resolved, refused TRL options refused, a JSON ``model_init_kwargs`` read;
        with no accelerator (CUDA, MPS, XPU, ...), ``use_cpu`` (else ``accelerate launch`` on CPUs runs every
        process alone, no gloo group)."""
        check_ranges(self, config_rules(self))
        if not torch.accelerator.is_available():
            self.use_cpu = True
        if self.bf16 is None:
            self.bf16 = bool(not self.fp16 and not self.use_cpu and torch.cuda.is_available()
                             and torch.cuda.is_bf16_supported())
        refuse_unimplemented(self)
        if isinstance(self.model_init_kwargs, str):
            self.model_init_kwargs = json.loads(self.model_init_kwargs)


@dataclass
class PostTrainConfig(SharedConfig, TrainingArguments):
    """Fields every posttrain trainer adds to transformers.TrainingArguments (which brings
    checkpointing, resume, accumulation, mixed precision, logging integrations and accelerate)."""

    max_length: int | None = field(default=1024, metadata={
        "help": "Longest tokenized example; longer ones are truncated on --truncation_side."})
    extra_columns: str = field(default="drop", metadata={
        "help": "Dataset columns the format does not use: 'drop' (default, as TRL; a warning names them) or "
                "'error' (strict: unexpected columns often mean the wrong dataset)."})
    logging_steps: float = field(default=10, metadata={
        "help": "Log every N optimizer steps (or a fraction of the run if < 1)."})
    learning_rate: float = field(default=2e-5, metadata={"help": "Initial AdamW learning rate."})
    dataset_num_proc: int | None = field(default=None, metadata={
        "help": "Processes for preparing the dataset (tokenizing, formatting, packing); default: this one."})
    activation_offloading: bool = unimplemented(False, "offload activations to the CPU.")
    disable_dropout: bool = field(default=True, metadata={
        "help": "Switch dropout off in the model (and DPO's reference model): dropout modules, attention "
                "dropout rates and the config's dropout fields are set to 0, so the saved config records 0. "
                "Default True for every posttrain trainer, SFT included; TRL defaults to True for DPO, KTO "
                "and reward but its SFTConfig has no such field and keeps the model's dropout. A LoRA "
                "adapter from --use_peft keeps its --lora_dropout."})

    def __post_init__(self):
        self.resolve_shared()
        if self.extra_columns not in ("error", "drop"):
            raise ValueError(f"extra_columns must be 'error' or 'drop', got {self.extra_columns!r}.")
        # Our collators emit the columns the loss needs; the Trainer must not prune them.
        self.remove_unused_columns = False
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; avoids a warning per epoch
        super().__post_init__()
