"""Language models with a scalar value head (for PPO-style trainers): one value per token.

``AutoModelForCausalLMWithValueHead`` and ``AutoModelForSeq2SeqLMWithValueHead`` wrap a transformers
model (optionally a ``peft.PeftModel``) as ``pretrained_model`` and add ``v_head``, a
``Linear(hidden_size, 1)`` that reads the trunk's last hidden state (for encoder-decoders the
decoder's). The head always computes in float32, also when the trunk is bf16.

Saved layout: the trunk's own ``save_pretrained`` output (a LoRA trunk saves only its adapter) plus
``value_head.safetensors`` with ``v_head.summary.weight`` and ``v_head.summary.bias`` (TRL's names). A directory without that file
(a plain language model) gets a fresh head: weight ~ normal(0, 1/sqrt(hidden_size + 1)) drawn from a
generator seeded with ``seed``, bias zero, so the same seed always gives the same head.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ..checkpoint import check_saved_model
from .loading import load_model, prepare_quantized

VALUE_HEAD_FILE = "value_head.safetensors"


@dataclass
class ValueHeadOutput:
    """``logits`` as the trunk returns them (only at the kept positions with ``logits_to_keep``),
    ``values`` ``[B, T]`` float32 at every (decoder) position, ``loss`` when labels were given.

    Not a transformers ``ModelOutput``: that is a dict, and a field named ``values`` hides
    ``dict.values``, which DistributedDataParallel and torch's pytree call on outputs. A plain dataclass
    registered as a pytree node is what DDP (``_find_tensors``, ``tree_flatten``) handles."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    values: torch.Tensor | None = None

    def __getitem__(self, key: str):
        return getattr(self, key)


pytree.register_dataclass(ValueHeadOutput, serialized_type_name=f"{__name__}.ValueHeadOutput")


class ValueHead(nn.Module):
    """Hidden states ``[B, T, H]`` -> values ``[B, T]`` in float32 (the input is cast to the head's dtype)."""

    def __init__(self, hidden_size: int, dropout: float = 0.0, seed: int = 0):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Built on "meta" and initialised from its own generator: the global RNG is left untouched.
        self.summary = nn.Linear(hidden_size, 1, dtype=torch.float32, device="meta").to_empty(device="cpu")
        self.reset_parameters(seed)

    def reset_parameters(self, seed: int = 0) -> None:
        """Deterministic init: weight ~ normal(0, 1/sqrt(H + 1)) from a generator seeded with ``seed``, bias 0."""
        generator = torch.Generator().manual_seed(seed)
        weight = torch.empty(self.summary.weight.shape, dtype=torch.float32)
        weight.normal_(0.0, 1.0 / math.sqrt(self.summary.in_features + 1), generator=generator)
        with torch.no_grad():
            self.summary.weight.copy_(weight)
            self.summary.bias.zero_()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(hidden_states.to(self.summary.weight.dtype))
        return self.summary(hidden).squeeze(-1).float()


def _hidden_size(config) -> int:
    for name in ("hidden_size", "n_embd", "d_model"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text is not config:
        return _hidden_size(text)
    raise ValueError(f"Cannot find the hidden size in {type(config).__name__}.")


class _PreTrainedModelWithValueHead(nn.Module):
    """Everything the causal and seq2seq variants share; they differ in ``task``, the forward
    signature and where the last hidden state is (``_last_hidden``)."""

    task = "causal-lm"

    def __init__(self, pretrained_model, v_head: ValueHead | None = None, seed: int = 0, dropout: float = 0.0):
        super().__init__()
        self.pretrained_model = pretrained_model
        if v_head is None:
            v_head = ValueHead(_hidden_size(self.config), dropout, seed)
        device = next(pretrained_model.parameters()).device
        self.v_head = v_head.to(device=device, dtype=torch.float32)

    # ---- passthroughs ------------------------------------------------------------------------------
    @property
    def config(self):
        return self.pretrained_model.config

    @property
    def _no_split_modules(self):
        """The trunk's transformer block classes: FSDP2 wraps (shards and gathers) block by block."""
        return getattr(self.pretrained_model, "_no_split_modules", None)

    @property
    def is_peft(self) -> bool:
        from .reference import is_peft_model

        return is_peft_model(self.pretrained_model)

    @property
    def peft_config(self):
        """The trunk's adapter configs (so ``reference.is_peft_model`` recognises a LoRA policy)."""
        if not self.is_peft:
            raise AttributeError("peft_config: this model has no LoRA adapter")
        return self.pretrained_model.peft_config

    def disable_adapter(self):
        """Context manager: the trunk with its adapter switched off (the value head still applies)."""
        if not self.is_peft:
            raise ValueError("disable_adapter() needs a LoRA trunk: pass peft_config to from_pretrained.")
        return self.pretrained_model.disable_adapter()

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs):
        trunk = self.pretrained_model
        if hasattr(trunk, "activation_checkpointing_enable"):
            trunk.activation_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs,
                                                  **kwargs)
        else:
            trunk.gradient_checkpointing_enable(gradient_checkpointing_kwargs=activation_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def activation_checkpointing_disable(self):
        trunk = self.pretrained_model
        (getattr(trunk, "activation_checkpointing_disable", None) or trunk.gradient_checkpointing_disable)()

    gradient_checkpointing_disable = activation_checkpointing_disable

    @property
    def is_activation_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) is True for m in self.pretrained_model.modules())

    def generate(self, *args, **kwargs):
        return self.pretrained_model.generate(*args, **kwargs)

    # ---- forward -----------------------------------------------------------------------------------
    def _last_hidden(self, output) -> torch.Tensor:
        return output.hidden_states[-1]

    def _run(self, **inputs) -> ValueHeadOutput:
        inputs = {k: v for k, v in inputs.items() if v is not None}
        inputs.setdefault("use_cache", False)
        # output_hidden_states works for every architecture; with a logits_to_keep mask or count the logits
        # cover only the kept positions, but the hidden states (and so the values) cover all of them.
        output = self.pretrained_model(**inputs, output_hidden_states=True, return_dict=True)
        values = self.v_head(self._last_hidden(output))
        return ValueHeadOutput(loss=getattr(output, "loss", None), logits=output.logits, values=values)

    # ---- saving and loading ------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str, state_dict: dict | None = None, **kwargs) -> None:
        """The trunk's ``save_pretrained`` (adapter only for a LoRA trunk) plus ``value_head.safetensors``;
        from ``state_dict`` (this wrapper's names, e.g. gathered from FSDP shards) when given."""
        from safetensors.torch import save_file

        os.makedirs(save_directory, exist_ok=True)
        if self.is_peft and str(self.config.name_or_path).startswith("tiny:"):
            kwargs.setdefault("save_embedding_layers", False)  # fixed vocabulary; skips peft's hub look-up
        head = self.v_head.state_dict()
        if state_dict is not None:
            kwargs["state_dict"] = {k.removeprefix("pretrained_model."): v for k, v in state_dict.items()
                                    if k.startswith("pretrained_model.")}
            head = {k.removeprefix("v_head."): v for k, v in state_dict.items() if k.startswith("v_head.")}
        self.pretrained_model.save_pretrained(save_directory, **kwargs)
        tensors = {f"v_head.{k}": v.detach().to("cpu").contiguous() for k, v in head.items()}
        save_file(tensors, os.path.join(save_directory, VALUE_HEAD_FILE), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, name_or_dir_or_model, peft_config=None, dtype=None, seed: int = 0,
                        dropout: float = 0.0, **kwargs):
        """Build from a ``tiny:`` name, hub name, local directory (a full model or a LoRA adapter
        directory, whose base is loaded from its ``base_model_name_or_path``) or a built model.

        ``peft_config`` wraps the trunk with ``peft.get_peft_model`` (only LoRA weights and the value
        head train); ``dtype`` and ``kwargs`` go to ``load_model``; ``seed`` seeds a ``tiny:`` trunk, a new
        LoRA adapter and a fresh value head. The head is read from ``value_head.safetensors`` when the directory has one.
        """
        import peft

        source = name_or_dir_or_model
        is_dir = isinstance(source, (str, os.PathLike)) and os.path.isdir(source)
        if isinstance(source, (str, os.PathLike)):
            source = str(source)
            if is_dir:
                check_saved_model(source)  # a posttrain save killed midway: finished, or a clear error
            if is_dir and os.path.exists(os.path.join(source, "adapter_config.json")):
                if peft_config is not None:
                    raise ValueError(f"{source} already holds a LoRA adapter; do not pass peft_config as well.")
                with open(os.path.join(source, "adapter_config.json")) as f:
                    base_name = json.load(f).get("base_model_name_or_path")
                if not base_name:
                    raise ValueError(f"{source}/adapter_config.json names no base_model_name_or_path.")
                base = load_model(base_name, cls.task, dtype=dtype, seed=seed, **kwargs)
                trunk = peft.PeftModel.from_pretrained(base, source, is_trainable=True)
            else:
                trunk = load_model(source, cls.task, dtype=dtype, seed=seed, **kwargs)
        else:
            trunk = source
        if peft_config is not None:
            if isinstance(trunk, peft.PeftModel):
                raise ValueError("The model already has a LoRA adapter; do not pass peft_config as well.")
            base_name = trunk.config.name_or_path
            with torch.random.fork_rng(devices=[]):  # the adapter drawn from seed (as add_adapter), global RNG kept
                torch.manual_seed(seed)
                trunk = peft.get_peft_model(prepare_quantized(trunk, peft_config), peft_config)
            for config in trunk.peft_config.values():
                # peft reads model.name_or_path, which models built in code (tiny:) leave empty.
                config.base_model_name_or_path = config.base_model_name_or_path or base_name
        model = cls(trunk, seed=seed, dropout=dropout)
        head_file = os.path.join(str(name_or_dir_or_model), VALUE_HEAD_FILE) if is_dir else None
        if head_file and os.path.exists(head_file):
            from safetensors.torch import load_file

            state = load_file(head_file)
            model.v_head.load_state_dict({k.removeprefix("v_head."): v for k, v in state.items()})  # strict
        return model


class AutoModelForCausalLMWithValueHead(_PreTrainedModelWithValueHead):
    """A causal language model plus one value per token."""

    task = "causal-lm"

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, logits_to_keep=None,
                **kwargs) -> ValueHeadOutput:
        return self._run(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         logits_to_keep=logits_to_keep, **kwargs)


class AutoModelForSeq2SeqLMWithValueHead(_PreTrainedModelWithValueHead):
    """An encoder-decoder model plus one value per decoder token."""

    task = "seq2seq"

    def _last_hidden(self, output) -> torch.Tensor:
        return output.decoder_hidden_states[-1]

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                **kwargs) -> ValueHeadOutput:
        return self._run(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                         decoder_attention_mask=decoder_attention_mask, **kwargs)
