"""Losses are pure functions of tensors, each tested against hand-computed values."""

from .logprobs import answer_logps, labelled_logps, selective_log_softmax
from .reward import bradley_terry_loss
from .sft import sft_loss, token_accuracy

__all__ = ["answer_logps", "bradley_terry_loss", "labelled_logps", "selective_log_softmax", "sft_loss", "token_accuracy"]
