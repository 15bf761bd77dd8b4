"""One entry point for models and tokenizers: ``tiny:<arch>`` names, hub names and local directories."""

from __future__ import annotations

import os

import torch
import transformers
from transformers.utils import logging

logger = logging.get_logger(__name__)

from ..checkpoint import check_saved_model
from .tiny import build_tiny_model, build_tokenizer

_AUTO_CLASSES = {
    "causal-lm": transformers.AutoModelForCausalLM,
    "seq-cls": transformers.AutoModelForSequenceClassification,
    "seq2seq": transformers.AutoModelForSeq2SeqLM,
}
_DTYPES = {"auto": "auto", "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}.")
    return _DTYPES[dtype]


MODEL_FORMS = ("give a local model directory, a tiny:<arch> name, or a hub name (offline: hub names need a local "
               "cache)")


def check_model_source(name_or_path) -> None:
    """A ``model_name_or_path`` that names a local path which is not there, or a directory with no model in it,
    fails here saying so (transformers would take it for a hub repo id, or say it cannot reach the hub)."""
    name = os.fspath(name_or_path)
    if name.startswith("tiny:"):
        return
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        if not any(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "adapter_config.json")):
            raise FileNotFoundError(f"--model_name_or_path {name}: the directory has no config.json (nor "
                                    "adapter_config.json), so it holds no model saved with save_pretrained; "
                                    + MODEL_FORMS)
        return
    if os.path.exists(path):
        raise FileNotFoundError(f"--model_name_or_path {name}: a file, not a model directory; " + MODEL_FORMS)
    if os.path.isabs(path) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name:
        raise FileNotFoundError(f"--model_name_or_path {name}: no such directory; " + MODEL_FORMS)


def _hub_error(name: str, err: OSError) -> OSError:
    """A hub name that cannot be loaded, said in one line with what to give instead."""
    from huggingface_hub import constants

    offline = " (HF_HUB_OFFLINE=1: the hub is not asked)" if constants.HF_HUB_OFFLINE else ""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return OSError(f"--model_name_or_path {name}: not a local directory, and as a hub name it cannot be "
                   f"loaded{offline}: {first} Check the name; or " + MODEL_FORMS + ".")


def load_tokenizer(name_or_path: str, **kwargs) -> transformers.PreTrainedTokenizerBase:
    """The tokenizer for a model name; a tokenizer without a pad token gets eos as pad (said in a warning).
    ``kwargs`` go to ``AutoTokenizer.from_pretrained`` (e.g. ``revision``, ``trust_remote_code``)."""
    if name_or_path.startswith("tiny:"):
        return build_tokenizer()
    check_saved_model(name_or_path)  # a posttrain save killed midway: finished, or a clear error
    check_model_source(name_or_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        logger.warning("Tokenizer %s has no pad token; using its eos token %r for padding.", name_or_path,
                       tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str, task: str = "causal-lm", dtype: str | torch.dtype | None = None,
               seed: int = 0, revision: str | None = None, trust_remote_code: bool = False,
               attn_implementation: str | None = None, **kwargs):
    """Load ``tiny:<arch>`` (built, seeded), a hub name, or a local directory for ``task`` (a LoRA adapter
    directory loads its base, then the adapter). ``quantization_config`` (a ``BitsAndBytesConfig`` or its dict)
    loads the base quantized, on this process's GPU or on the CPU.

    ``task`` is ``causal-lm``, ``seq-cls`` (a one-label reward head unless ``num_labels`` is given)
    or ``seq2seq``. ``revision``, ``trust_remote_code`` and ``attn_implementation`` mean what they mean
    to ``from_pretrained`` (TRL's ``--model_revision``, ``--trust_remote_code``,
    ``--attn_implementation``); a tiny model takes only ``attn_implementation``.
    """
    if task not in _AUTO_CLASSES:
        raise ValueError(f"Unknown task {task!r}; expected one of {sorted(_AUTO_CLASSES)}.")
    check_saved_model(name_or_path)  # a posttrain save killed midway: finished, or a clear error
    dtype = resolve_dtype(dtype)
    quantization = kwargs.get("quantization_config")
    if isinstance(quantization, dict):  # from JSON (--model_init_kwargs, YAML)
        kwargs["quantization_config"] = quantization = transformers.BitsAndBytesConfig(**quantization)
    if quantization is not None:
        kwargs.setdefault("device_map", quantization_device_map())
    adapter = _adapter_base(name_or_path)
    if adapter is not None:  # a LoRA adapter directory: its base (quantized if asked), then the adapter on it
        import peft

        base = load_model(adapter, task, dtype, seed, revision, trust_remote_code, attn_implementation, **kwargs)
        return peft.PeftModel.from_pretrained(base, name_or_path, is_trainable=True)  # training can continue
    if name_or_path.startswith("tiny:"):
        model = build_tiny_model(name_or_path, task, seed=seed, num_labels=kwargs.get("num_labels", 1))
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
        if quantization is not None:  # transformers quantizes while loading weights: save the built model, load it
            return _load_quantized_tiny(model, name_or_path, task, dtype, kwargs)
        return model.to(dtype) if isinstance(dtype, torch.dtype) else model
    if task == "seq-cls":
        kwargs.setdefault("num_labels", 1)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    hub = {"revision": revision} if revision else {}
    hub["trust_remote_code"] = trust_remote_code
    check_model_source(name_or_path)
    try:
        config = transformers.AutoConfig.from_pretrained(name_or_path, **hub)
    except OSError as err:
        if os.path.isdir(os.path.expanduser(name_or_path)):
            raise
        raise _hub_error(name_or_path, err) from err
    if task == "causal-lm" and getattr(config, "is_encoder_decoder", False):
        task = "seq2seq"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # a head the checkpoint lacks (e.g. a new reward head) starts the same every time
        model = _AUTO_CLASSES[task].from_pretrained(name_or_path, **hub, **kwargs)
    if quantization is not None:
        _no_cpu_inference_packing(model)
    if task == "seq-cls" and model.config.pad_token_id is None:
        # Sequence classifiers find the last real token through pad_token_id; borrow eos.
        model.config.pad_token_id = model.config.eos_token_id
    return model


def _adapter_base(path: str) -> str | None:
    """The base model a saved LoRA adapter directory names (None for anything else)."""
    import json
    import os

    if not os.path.isfile(os.path.join(path, "adapter_config.json")) or os.path.isfile(os.path.join(path, "config.json")):
        return None
    with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as fh:
        base = json.load(fh).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path}/adapter_config.json names no base_model_name_or_path; load the base yourself and "
                         "attach the adapter with peft.PeftModel.from_pretrained(base, path).")
    return base


_DROPOUT_SUFFIXES = ("dropout", "_pdrop", "dropout_rate", "dropout_prob")


def _zero_dropout_floats(obj) -> None:
    for name, value in vars(obj).items():
        if isinstance(value, float) and name.endswith(_DROPOUT_SUFFIXES):
            setattr(obj, name, 0.0)


def disable_dropout(model) -> None:
    """Switch dropout off in ``model`` even in training mode, so a training forward gives the same
    log-probs as an eval one (DPO/KTO compare the policy in training mode with a reference in eval
    mode: dropout noise there is bias, not regularisation).

    Zeroes three things: ``p`` of every ``nn.Dropout`` (as TRL's ``disable_dropout_in_model`` does);
    float module attributes named like dropout rates, because attention copies the rate out of the
    config at construction and passes it to the attention function only while training (Llama and
    Qwen2's ``self.attention_dropout``, which no ``nn.Dropout`` holds); and the same fields of the
    config and its sub-configs, which some models read at forward time (Persimmon's attention). A
    checkpoint saved afterwards therefore records the zero rates in its config.
    """
    model = getattr(model, "module", model)  # a DDP wrapper
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        _zero_dropout_floats(module)
    configs = [getattr(model, "config", None)]
    while configs:
        config = configs.pop()
        if isinstance(config, transformers.PreTrainedConfig):
            _zero_dropout_floats(config)
            configs += [v for v in vars(config).values() if isinstance(v, transformers.PreTrainedConfig)]


def is_encoder_decoder(model) -> bool:
    """Whether a model (or a ``tiny:`` name, hub name or directory) is encoder-decoder, like T5."""
    if not isinstance(model, str):
        model = getattr(model, "module", model)
        return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    if model.startswith("tiny:"):
        from .tiny import parse_tiny_name

        return parse_tiny_name(model)[0] == "t5"
    return bool(getattr(transformers.AutoConfig.from_pretrained(model), "is_encoder_decoder", False))


def add_adapter(model, peft_config, seed: int):
    """``peft.get_peft_model`` with the global RNG seeded first: the adapter's initial weights are drawn
    from it, so the same seed gives the same adapter (and the same first steps as TRL, which seeds first).
    A quantized base is prepared for k-bit training first (:func:`prepare_quantized`); ``peft_config=None``
    returns the model as it is, unless it is a quantized base without an adapter (an error)."""
    import peft

    model = prepare_quantized(model, peft_config)
    if peft_config is None:
        return model
    transformers.set_seed(seed)
    return peft.get_peft_model(model, peft_config)


# ---- quantized bases (bitsandbytes 4- and 8-bit; on CPUs too) ------------------------------------------------


def quantization_device_map():
    """Where a bitsandbytes-quantized model is loaded: this process's GPU (as TRL's ``get_kbit_device_map``),
    else the CPU (bitsandbytes >= 0.49 runs its 4- and 8-bit layers on CPUs)."""
    if torch.cuda.is_available():
        from accelerate import PartialState

        return {"": PartialState().local_process_index}
    return {"": "cpu"}


def is_quantized(model) -> bool:
    """Whether ``model`` (or the model inside a value-head or peft wrapper) was loaded with quantized weights."""
    return any(getattr(m, "is_quantized", False) or getattr(m, "is_loaded_in_4bit", False)
               or getattr(m, "is_loaded_in_8bit", False)
               for m in model.modules() if isinstance(m, transformers.PreTrainedModel))


def has_adapter(model) -> bool:
    import peft

    return any(isinstance(m, peft.PeftModel) or getattr(m, "_hf_peft_config_loaded", False) for m in model.modules())


def prepare_quantized(model, peft_config):
    """A quantized base trains only through an adapter (its weights are frozen integers): without ``peft_config``
    (and no adapter already on it) that is an error; with one, ``peft.prepare_model_for_kbit_training`` freezes
    the base and keeps norms and other small float weights in float32. Gradient checkpointing is left to the
    trainers (one place turns it on, with the inputs made to carry gradients). Other models are returned as they are."""
    if not is_quantized(model):
        return model
    if peft_config is None:
        if has_adapter(model):
            return model
        raise ValueError("A quantized base model (load_in_4bit / load_in_8bit / a quantization_config) trains "
                         "only through a LoRA adapter: pass peft_config=LoraConfig(...) (--use_peft on the command "
                         "line), or load the model without quantization.")
    import peft

    return peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def _no_cpu_inference_packing(model) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit layer's weights at its first no-grad forward in eval
    mode and from then on computes that layer with a bfloat16 inference kernel, in training forwards too. Sampling
    (no grad, eval) comes before every update, so the policy would train through a different, lower-precision
    computation than the one it was loaded with, and sampling-time log-probs would not match the update's. Keep
    every 4-bit layer on the one float path."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _load_quantized_tiny(model, name: str, task: str, dtype, kwargs: dict):
    import tempfile

    with tempfile.TemporaryDirectory(prefix="posttrain-tiny-") as tmp:
        model.save_pretrained(tmp)
        if dtype is not None:
            kwargs["dtype"] = dtype
        quantized = _AUTO_CLASSES[task].from_pretrained(tmp, **kwargs)
    quantized.config.name_or_path = quantized.name_or_path = name  # what a saved adapter names as its base
    _no_cpu_inference_packing(quantized)
    return quantized
