"""Rollouts shared by every online trainer: sampled episodes as token ids with their masks and log-probs."""

from ..losses.logprobs import forward_completion, model_inputs
from .batch import Rollout, pad_with_attention
from .sampling import GenerationBackend, HFGenerate, PolicySampler, SamplingConfig, completion_length

__all__ = ["GenerationBackend", "HFGenerate", "PolicySampler", "Rollout", "SamplingConfig", "completion_length",
           "forward_completion", "model_inputs", "pad_with_attention"]
