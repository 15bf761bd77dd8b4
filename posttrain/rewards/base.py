"""Reward functions for online RL (PPO, GRPO, RLOO): the contract, a weighted set of them, and specs.

A reward function is called with keywords only, as TRL's ``GRPOTrainer`` calls it::

    fn(prompts=..., completions=..., completion_ids=..., trainer_state=..., **columns) -> list[float | None]

- ``prompts``: the dataset's prompt values (a string, or a list of chat messages);
- ``completions``: one per prompt: the decoded text, or, when the prompt is a message list, the
  completion as messages ``[{"role": "assistant", "content": text}]`` (TRL's conversational format;
  :func:`completion_text` gives the text of either);
- ``completion_ids``: the completion token ids (a list of int lists), when the caller has them;
- ``trainer_state``: the ``transformers.TrainerState`` of the run (e.g. ``global_step``), passed as is,
  when the caller has one;
- ``columns``: every other dataset column, as a list with one value per completion (e.g. ``answer``).

So ``def f(completions, **kwargs)`` and ``def f(completions, prompts, answer, **kwargs)`` both work;
functions must accept ``**kwargs`` they do not use. ``None`` means "this function does not apply to
that sample". Its readable name (``__name__``, or the class name) is what logs and error messages show.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass, field

import torch

from ..errors import PostTrainError
from ..imports import IMPORT_PATH, import_callable


class RewardError(PostTrainError, RuntimeError):
    """A reward function failed or returned something unusable; the message names it and the sample."""


# The largest reward magnitude accepted: beyond it float32 statistics (a batch's mean and std, GAE, whitening)
# overflow to inf, and a NaN policy follows.
MAX_ABS_REWARD = 1e15
NONFINITE_POLICIES = ("error", "skip")


def reward_name(fn) -> str:
    """The readable name of a reward function (``__name__``, else its class name)."""
    return getattr(fn, "__name__", None) or type(fn).__name__


def completion_text(completion) -> str:
    """The text of one completion: the string itself, or for a message list (TRL's conversational
    format) the content of its last assistant message (text parts joined; "" for a message with no
    content, e.g. only tool calls)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if not isinstance(completion, (list, tuple)) or not all(isinstance(m, dict) for m in completion):
        raise TypeError(f"A completion must be a string or a list of chat messages (dicts with 'role' and "
                        f"'content'), got {_short(completion)}.")
    for message in reversed(completion):
        if message.get("role") == "assistant":
            content = message.get("content")
            if content is None:
                return ""
            if isinstance(content, str):
                return content
            # multimodal-style content: [{"type": "text", "text": ...}, ...]
            return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    raise ValueError(f"The completion {_short(completion)} has no assistant message; a conversational completion "
                     'is a list of messages such as [{"role": "assistant", "content": text}].')


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class RewardResult:
    """``rewards`` [B] float32: weighted sum over functions (None counts 0; NaN where every function
    returned None); ``valid`` [B] bool: False exactly where ``rewards`` is NaN; ``per_function``:
    name -> [B] float32 raw (unweighted) values, NaN for None; ``num_dropped``: count of invalid samples;
    ``num_nonfinite``: values skipped as None for being non-finite (``nonfinite="skip"``)."""

    rewards: torch.Tensor
    valid: torch.Tensor
    per_function: dict[str, torch.Tensor] = field(default_factory=dict)
    num_dropped: int = 0
    num_nonfinite: int = 0

    def metrics(self) -> dict[str, float]:
        """Means for logging: ``reward``, ``reward_std`` over valid samples, and ``rewards/<name>`` (NaN skipped)."""
        out = {}
        valid = self.rewards[self.valid]
        if valid.numel():
            out["reward"] = valid.mean().item()
            out["reward_std"] = valid.std().item() if valid.numel() > 1 else 0.0
        for name, values in self.per_function.items():
            present = values[~values.isnan()]
            if present.numel():
                out[f"rewards/{name}"] = present.mean().item()
        return out


class RewardSet:
    """Several reward functions with weights: ``RewardSet([fn_a, fn_b], weights=[1.0, 0.5])``.

    ``funcs`` may be callables or spec strings (see :func:`resolve_reward`); a single one is allowed.
    Calling the set (``reward_set(prompts, completions, completion_ids=..., trainer_state=...,
    precomputed=..., **columns)``) calls each function with keywords and returns a
    :class:`RewardResult`; each function's output is checked (length, numbers, finite), and a
    function that raises is re-run sample by sample so the error names the sample that fails.

    ``nonfinite``: what a NaN, infinite or too large (beyond +-``MAX_ABS_REWARD``) value does: ``"error"``
    (a RewardError naming the function and the sample) or ``"skip"`` (it counts as None; counted in
    ``RewardResult.num_nonfinite``).
    """

    def __init__(self, funcs, weights=None, names=None, allow_empty: bool = False, nonfinite: str = "error"):
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}.")
        self.nonfinite = nonfinite
        if callable(funcs) or isinstance(funcs, str):
            funcs = [funcs]
        funcs = [resolve_reward(f) for f in funcs]
        if not funcs and not allow_empty:  # empty: only rewards a rollout source computed (``precomputed``)
            raise ValueError("RewardSet needs at least one reward function.")
        if weights is None:
            weights = [1.0] * len(funcs)
        weights = [float(w) for w in weights]
        if len(weights) != len(funcs):
            raise ValueError(f"Got {len(weights)} reward weights for {len(funcs)} reward functions; "
                             "give one weight per function.")
        if not all(math.isfinite(w) for w in weights):
            raise ValueError(f"Reward weights must be finite numbers, got {weights}.")
        if names is None:
            names = [reward_name(f) for f in funcs]
        if len(names) != len(funcs):
            raise ValueError(f"Got {len(names)} reward names for {len(funcs)} reward functions.")
        unique, seen = [], {}
        for name in names:  # the same built-in twice (e.g. two regexes) still logs separately
            seen[name] = seen.get(name, 0) + 1
            unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
        self.funcs, self.weights, self.names = funcs, weights, unique

    def __len__(self) -> int:
        return len(self.funcs)

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}*{w:g}" for n, w in zip(self.names, self.weights))
        return f"RewardSet({parts})"

    def __call__(self, prompts, completions, *, completion_ids=None, trainer_state=None, precomputed=None,
                 **columns) -> RewardResult:
        """Score a batch: each function is called with keywords (see the module docstring):
        ``fn(prompts=prompts, completions=completions, completion_ids=completion_ids (when given),
        trainer_state=trainer_state (when given), **columns)``.

        ``precomputed``: optional ``{name: [float | None, ...]}``, rewards a rollout source (e.g. a tool
        environment) computed for its own episodes; each is checked like a function's output and adds
        to the sum with weight 1, logged in ``per_function`` under its name (``env/<name>`` if a
        function already has that name)."""
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"Got {len(prompts)} prompts for {n} completions; give one prompt per completion.")
        kwargs = {"prompts": prompts, "completions": completions}
        if completion_ids is not None:
            kwargs["completion_ids"] = completion_ids
        kwargs.update(columns)
        for key, values in kwargs.items():
            if len(values) != n:
                raise ValueError(f"Column {key!r} has {len(values)} values for {n} completions.")
        if trainer_state is not None:  # not per sample: passed as is, never sliced
            kwargs["trainer_state"] = trainer_state
        skipped = []  # one entry per non-finite value skipped
        sources = [(self._run(fn, name, kwargs, n, self.nonfinite, skipped), weight, name)
                   for fn, weight, name in zip(self.funcs, self.weights, self.names)]
        if precomputed is not None:
            if not hasattr(precomputed, "items"):
                raise ValueError(f"precomputed must be a dict of reward name -> list of floats, "
                                 f"got {type(precomputed).__name__}.")
            taken = set(self.names)
            for key, out in precomputed.items():
                name = f"env/{key}" if key in taken else str(key)
                if name in taken:
                    raise ValueError(f"Precomputed reward {key!r} clashes with reward {name!r}; rename it.")
                taken.add(name)
                sources.append((_check_values(f"Precomputed reward {key!r}", out, completions, self.nonfinite,
                                              skipped), 1.0, name))
        total, present = torch.zeros(n, dtype=torch.float32), torch.zeros(n, dtype=torch.bool)
        per_function = {}
        for values, weight, name in sources:
            tensor = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float32)
            per_function[name] = tensor
            mask = ~tensor.isnan()
            present |= mask
            total += weight * torch.where(mask, tensor, torch.zeros_like(tensor))
        total[~present] = math.nan
        return RewardResult(total, present, per_function, int((~present).sum()), len(skipped))

    @staticmethod
    def _run(fn, name, kwargs, n, nonfinite="error", skipped=None) -> list[float | None]:
        try:
            out = fn(**kwargs)
        except Exception as err:
            _raise_for_sample(fn, name, kwargs, n, err)
        return _check_values(f"Reward function {name!r}", out, kwargs["completions"], nonfinite, skipped)


def _check_values(who, out, completions, nonfinite: str = "error", skipped: list | None = None) -> list[float | None]:
    """``out`` as a list of float | None, one per completion, or a RewardError naming ``who``. A value that is
    not finite or beyond +-MAX_ABS_REWARD is an error, or with ``nonfinite="skip"`` None (its index appended to
    ``skipped``)."""
    n = len(completions)
    if torch.is_tensor(out):
        out = out.tolist()
    if isinstance(out, (str, bytes)) or not hasattr(out, "__len__"):
        raise RewardError(f"{who} returned {type(out).__name__}, not a list of floats "
                          f"(one per completion; None where it does not apply).")
    if len(out) != n:
        raise RewardError(f"{who} returned {len(out)} values for {n} completions; "
                          "it must return exactly one value (or None) per completion.")
    values = []
    for i, v in enumerate(out):
        if torch.is_tensor(v) and v.numel() == 1:
            v = v.item()
        if v is not None and not isinstance(v, numbers.Real):
            raise RewardError(f"{who} returned {_short(v)} (a {type(v).__name__}) for "
                              f"sample {i}; return a float, or None where it does not apply.")
        if v is not None and not abs(float(v)) <= MAX_ABS_REWARD:  # NaN fails this too
            if nonfinite == "skip":
                if skipped is not None:
                    skipped.append(i)
                v = None
            else:
                raise RewardError(
                    f"{who} returned {v} for sample {i} (completion {_short(completions[i])}); rewards must be "
                    f"finite, within +-{MAX_ABS_REWARD:g} (beyond it float32 statistics overflow). Return None to "
                    "skip a sample, or set nonfinite_rewards='skip' (CLI: --nonfinite_rewards skip) to drop such "
                    "values and count them in the logs.")
        values.append(None if v is None else float(v))
    return values


def _raise_for_sample(fn, name, kwargs, n, err):
    """Re-run ``fn`` one sample at a time (every per-sample keyword sliced to that sample,
    ``trainer_state`` passed unchanged) to find which one fails, then raise a RewardError about it."""
    prompts, completions = kwargs["prompts"], kwargs["completions"]
    for i in range(n):
        sample = {k: (v if k == "trainer_state" else [v[i]]) for k, v in kwargs.items()}
        try:
            fn(**sample)
        except Exception as sample_err:
            raise RewardError(
                f"Reward function {name!r} raised on sample {i} (prompt={_short(prompts[i])}, completion="
                f"{_short(completions[i])}): {type(sample_err).__name__}: {sample_err}") from err
    raise RewardError(f"Reward function {name!r} raised on the batch of {n} samples but on no single "
                      f"sample alone: {type(err).__name__}: {err}") from err


# ---- specs -----------------------------------------------------------------------------------------


def _spec_forms() -> str:
    from .builtin import BUILTIN_REWARDS

    names = ", ".join(BUILTIN_REWARDS)
    return (f"a built-in ({names}; an argument after ':', e.g. 'length:20'), an import path "
            "'package.module.function' or 'package.module:function', a TRL reward name ("
            f"{', '.join(_TRL_REWARDS)}), or a reward-model directory containing config.json")


# The names TRL's GRPO/RLOO scripts accept for functions of trl.rewards, with the arguments those scripts
# build the factory ones with.
_TRL_REWARDS = {"accuracy_reward": None, "reasoning_accuracy_reward": None, "think_format_reward": None,
                "get_soft_overlong_punishment": {"max_completion_len": 1280, "soft_punish_cache": 256}}
_DOTTED_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def _trl_reward(name: str):
    try:
        import trl.rewards
    except ImportError as err:
        raise ValueError(f"Reward {name!r} is one of TRL's reward functions (trl.rewards); install trl to use it "
                         f"(pip install trl), or use another reward: {_spec_forms()}.") from err
    fn = getattr(trl.rewards, name)
    return fn(**_TRL_REWARDS[name]) if _TRL_REWARDS[name] else fn


def resolve_reward(spec):
    """A reward function from a spec: a callable (returned as is), a built-in name with an optional
    argument after ':' (``sentiment``, ``length:20``, ``regex:^\\d+``, ``arithmetic``), an import
    path (TRL's ``package.module.function``, or ``package.module:function``), a name TRL's scripts
    accept for a ``trl.rewards`` function (``think_format_reward``, ...; needs trl), or a directory with
    ``config.json`` (a reward model, scored by :class:`~posttrain.rewards.model.RewardModelScorer`)."""
    if callable(spec):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"A reward must be a callable or a spec string, got {type(spec).__name__}; "
                         f"valid specs: {_spec_forms()}.")
    spec = os.fspath(spec)
    if os.path.isdir(spec):
        if not os.path.isfile(os.path.join(spec, "config.json")):
            raise ValueError(f"Reward directory {spec!r} has no config.json; give a directory saved with "
                             "save_pretrained (e.g. by `posttrain reward`).")
        from .model import RewardModelScorer

        return RewardModelScorer(spec)
    from .builtin import make_builtin

    name, has_arg, arg = spec.partition(":")
    builtin = make_builtin(name, arg if has_arg else None)
    if builtin is not None:
        return builtin
    if spec in _TRL_REWARDS:
        return _trl_reward(spec)
    if IMPORT_PATH.match(spec):
        return import_callable(spec, "Reward")
    if _DOTTED_PATH.match(spec):
        module, _, function = spec.rpartition(".")
        return import_callable(f"{module}:{function}", "Reward")
    raise ValueError(f"Unknown reward {spec!r}. Valid forms: {_spec_forms()}.")


def as_completions(prompts: list, texts: list[str]) -> list:
    """Completions in the form reward functions get them, as in TRL: the text for a plain-text prompt,
    ``[{"role": "assistant", "content": text}]`` for a conversational (message-list) prompt."""
    return [[{"role": "assistant", "content": t}] if isinstance(p, list) else t for p, t in zip(prompts, texts)]


def score_rollout(rewards: RewardSet | None, rollout, tokenizer, trainer_state=None) -> RewardResult:
    """Score a rollout's episodes: the reward functions (keywords, as in TRL) on the decoded completions
    -- message lists for conversational prompts -- plus the rewards the rollout source computed itself."""
    if rewards is None and not rollout.rewards:
        raise ValueError("Nothing scores these completions: pass reward_funcs (CLI: --reward_funcs), or use an "
                         "environment that scores its own episodes.")
    texts = tokenizer.batch_decode(rollout.completion_lists(), skip_special_tokens=True)
    completions = as_completions(rollout.prompts, texts)
    rewards = rewards if rewards is not None else RewardSet([], allow_empty=True)
    return rewards(rollout.prompts, completions, completion_ids=rollout.completion_lists(),
                   trainer_state=trainer_state, precomputed=rollout.rewards or None, **rollout.columns)
