"""Held-out evaluation of a policy: sample completions for prompts, score them, and measure the KL
to a reference model (what the demo reports for every stage).

The KL is the Monte-Carlo estimate the RLHF literature plots on the x-axis of a reward-vs-KL
frontier: for completions ``y`` sampled from the policy at temperature 1,
``sum_t log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)``, in nats per completion, averaged over
prompts. Sampling is seeded and leaves the caller's RNG untouched, so two models evaluated with the
same seed see the same prompts in the same order.
"""

from __future__ import annotations

import torch

from ..data.tokenize import tokenize_prompt
from ..rollout.batch import forward_completion
from ..rollout.sampling import PolicySampler, SamplingConfig


@torch.no_grad()
def evaluate_policy(model, tokenizer, prompts: list[str], rewards: dict, *, reference=None,
                    max_new_tokens: int = 24, seed: int = 0, batch_size: int = 32) -> dict:
    """Mean of each reward in ``rewards`` (name -> ``fn(prompts, completions) -> list[float]``), mean KL
    to ``reference`` (None: no ``kl`` key), mean completion length in tokens, and every sample.

    Returns ``{name: mean, ..., "kl": mean, "length": mean, "samples": [{"prompt", "completion",
    name: value, ...}]}`` with one sample per prompt, in the order of ``prompts``.
    """
    if not prompts:
        raise ValueError("evaluate_policy needs at least one prompt.")
    sampler = PolicySampler(tokenizer, SamplingConfig(max_new_tokens=max_new_tokens, temperature=1.0))
    samples, kls, lengths = [], [], []
    reference_was_training = reference is not None and reference.training
    try:
        if reference is not None:
            reference.eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start: start + batch_size]
                ids = [tokenize_prompt(tokenizer, p, None) for p in chunk]
                rollout = sampler(model, ids, chunk, with_logprobs=reference is not None)
                texts = tokenizer.batch_decode(rollout.completion_lists(), skip_special_tokens=True)
                lengths += rollout.completion_mask.sum(1).tolist()
                if reference is not None:
                    ref_logps, _ = forward_completion(reference, rollout, 1.0)
                    kls += ((rollout.logprobs - ref_logps) * rollout.completion_mask).sum(1).tolist()
                scores = {name: fn(chunk, texts) for name, fn in rewards.items()}
                for i, (prompt, text) in enumerate(zip(chunk, texts)):
                    samples.append({"prompt": prompt, "completion": text,
                                    **{name: float(values[i]) for name, values in scores.items()}})
    finally:
        if reference_was_training:
            reference.train()
    out = {name: sum(s[name] for s in samples) / len(samples) for name in rewards}
    if reference is not None:
        out["kl"] = sum(kls) / len(kls)
    out["length"] = sum(lengths) / len(lengths)
    out["samples"] = samples
    return out
