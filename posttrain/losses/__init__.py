"""Losses are pure functions of tensors, each tested against hand-computed values."""

from .logprobs import causal_lm_logprobs, selective_log_softmax
from .reward import bradley_terry_loss
from .sft import sft_loss, token_accuracy

__all__ = ["bradley_terry_loss", "causal_lm_logprobs", "selective_log_softmax", "sft_loss", "token_accuracy"]
