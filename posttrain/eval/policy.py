"""Held-out evaluation of a policy, the one evaluator: sample completions for prompts, score them, and
measure the KL to a reference model. The online trainers' ``evaluate()`` and the demo both use it.

The KL is the Monte-Carlo estimate the RLHF literature plots on the x-axis of a reward-vs-KL
frontier: for completions ``y`` sampled from the policy, ``sum_t log pi(y_t | x, y_<t) - log
pi_ref(y_t | x, y_<t)``. ``kl_sum`` is its mean in nats per completion; ``kl`` the per-token mean (the
unit every trainer logs). Sampling is seeded and leaves the caller's RNG untouched, so two models
evaluated with the same seed see the same prompts in the same order.
"""

from __future__ import annotations

import torch

from ..data.tokenize import tokenize_prompt
from ..models.reference import Reference
from ..rewards import RewardSet
from ..rewards.base import score_rollout
from ..rollout.sampling import PolicySampler, SamplingConfig


@torch.no_grad()
def evaluate_policy(model, tokenizer, prompts: list, rewards=None, *, reference=None, columns: dict | None = None,
                    sampler=None, prompt_ids: list[list[int]] | None = None, trainer_state=None,
                    max_new_tokens: int = 24, seed: int = 0, batch_size: int = 32) -> dict:
    """Evaluate ``model`` on ``prompts`` (text or chat messages; ``columns``: other dataset columns).

    ``rewards``: a ``RewardSet`` or a dict name -> reward function (called with keywords, as in
    training); ``reference``: a model or a :class:`~posttrain.models.reference.Reference` (None: no KL);
    ``sampler``: the rollout source (default: sampling at temperature 1, ``max_new_tokens``).

    Returns the mean of each reward function (by name) and of their weighted sum (``reward``), ``kl``
    and ``kl_sum`` (with a reference), ``length`` (completion tokens), and ``samples``: one dict per
    prompt, in order, with ``prompt``, ``completion`` and each reward.
    """
    if not len(prompts):
        raise ValueError("evaluate_policy needs at least one prompt.")
    if isinstance(rewards, dict):
        rewards = RewardSet(list(rewards.values()), names=list(rewards))
    if isinstance(reference, torch.nn.Module):
        reference = Reference("copy", reference)
    sampler = sampler or PolicySampler(tokenizer, SamplingConfig(max_new_tokens=max_new_tokens, temperature=1.0))
    temperature = sampler.sampling.temperature or 1.0
    columns = columns or {}
    prompt_ids = prompt_ids or [tokenize_prompt(tokenizer, p) for p in prompts]
    samples, per_sequence, lengths, kl_tokens = [], [], [], [0.0, 0]
    reference_was_training = reference is not None and reference.model is not None and reference.model.training
    try:
        if reference_was_training:
            reference.model.eval()
        # the CUDA generator too: sampling on a GPU draws from it, and training's dropout must not see that
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                rows = range(start, min(start + batch_size, len(prompts)))
                chunk = [prompts[i] for i in rows]
                rollout = sampler(model, [prompt_ids[i] for i in rows], chunk,
                                  {c: [v[i] for i in rows] for c, v in columns.items()}, reference is not None)
                texts = tokenizer.batch_decode(rollout.completion_lists(), skip_special_tokens=True)
                mask = rollout.completion_mask
                lengths += mask.sum(1).tolist()
                if reference is not None:
                    ref_logps = reference.completion_logps(model, rollout, temperature)
                    kl = (rollout.logprobs - ref_logps) * mask
                    per_sequence += kl.sum(1).tolist()
                    kl_tokens = [kl_tokens[0] + kl.sum().item(), kl_tokens[1] + int(mask.sum())]
                scored = {}
                if rewards is not None or rollout.rewards:  # an environment may score its own episodes
                    result = score_rollout(rewards, rollout, tokenizer, trainer_state)
                    scored = {"reward": result.rewards.tolist(),
                              **{k: v.tolist() for k, v in result.per_function.items()}}
                for i, (prompt, text) in enumerate(zip(chunk, texts)):
                    samples.append({"prompt": prompt, "completion": text, **{k: v[i] for k, v in scored.items()}})
    finally:
        if reference_was_training:
            reference.model.train()
    names = [k for k in samples[0] if k not in ("prompt", "completion")]
    out = {name: _nanmean([s[name] for s in samples]) for name in names}
    if reference is not None:
        out["kl"] = kl_tokens[0] / max(kl_tokens[1], 1)
        out["kl_sum"] = sum(per_sequence) / len(per_sequence)
    out["length"] = sum(lengths) / len(lengths)
    out["samples"] = samples
    return out


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if v == v]
    return sum(kept) / len(kept) if kept else float("nan")
