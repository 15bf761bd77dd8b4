"""Judges: which of two completions of a prompt is better (pairwise), or how good one is (pointwise), and what
follows from many verdicts: win rates with confidence intervals and Bradley-Terry (Elo-scale) ratings.

The pairwise contract is TRL's (``BasePairwiseJudge``, removed from TRL 1.x): ``judge(prompts, completions,
shuffle_order=True, return_scores=False)`` with ``completions`` a list of pairs; it returns, per prompt, the
index of the better completion (0 or 1), or with ``return_scores=True`` the probability that the first one is
better. Kinds:

- ``RuleJudge``: a Python function ``fn(prompt, completion) -> float`` (pointwise; pairs compare the two);
- ``RewardModelJudge``: any one-label sequence classifier (e.g. from ``posttrain reward``) through
  ``RewardModelScorer``; a pair's probability is ``sigmoid(r_first - r_second)`` (Bradley-Terry);
- ``LLMJudge``: a local causal LM prompted with a template; the verdict is read from the log-probabilities of
  the two answer tokens (no free text is parsed), and each pair is judged in both orders (position-swap
  debiasing) and the two probabilities averaged;
- ``APIJudge`` (alias ``OpenAIPairwiseJudge``): the same verdict from a chat-completions HTTP API (OpenAI or any
  compatible server), read from the top log-probs of its one-token reply (the reply text if it sends none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from ..rewards.model import RewardModelScorer
from ..rollout.batch import pad_with_attention


class BasePairwiseJudge:
    """``judge(prompts, completions, shuffle_order=True, return_scores=False)``: subclasses implement ``scores``,
    the probability that the first completion of each pair is better, in the order given."""

    def scores(self, prompts: list, pairs: list) -> list[float]:
        raise NotImplementedError

    def judge(self, prompts: list, completions: list, shuffle_order: bool = True, return_scores: bool = False,
              seed: int = 0) -> list:
        if len(prompts) != len(completions) or any(len(pair) != 2 for pair in completions):
            raise ValueError(f"judge() takes one pair of completions per prompt; got {len(prompts)} prompts and "
                             f"{len(completions)} entries, of lengths {sorted({len(c) for c in completions})}.")
        flip = torch.rand(len(prompts), generator=torch.Generator().manual_seed(seed)) < 0.5 if shuffle_order \
            else torch.zeros(len(prompts), dtype=torch.bool)
        shown = [pair[::-1] if f else list(pair) for pair, f in zip(completions, flip.tolist())]
        first = [1.0 - p if f else p for p, f in zip(self.scores(prompts, shown), flip.tolist())]
        return first if return_scores else [0 if p > 0.5 else 1 if p < 0.5 else -1 for p in first]


def _outcome(p: float) -> float:
    """A hard verdict from p(first is better): 1 a win, 0 a loss, 0.5 a tie."""
    return 1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5


class _PointwiseJudge(BasePairwiseJudge):
    """A judge that scores each completion alone (``score``); a pair's probability is ``prefer(first, second)``."""

    def score(self, prompts: list, completions: list) -> list[float]:
        raise NotImplementedError

    @staticmethod
    def prefer(first: float, second: float) -> float:
        raise NotImplementedError

    def scores(self, prompts, pairs):
        a, b = self.score(prompts, [p[0] for p in pairs]), self.score(prompts, [p[1] for p in pairs])
        return [self.prefer(x, y) for x, y in zip(a, b)]


class RuleJudge(_PointwiseJudge):
    """A rule ``fn(prompt, completion) -> float`` (higher is better), or with ``batched=True`` a reward function
    ``fn(prompts=..., completions=...) -> list`` (any built-in reward, e.g. ``sentiment``). ``score`` is
    pointwise; a pair's probability is 1, 0 or 0.5 (a tie, which ``judge`` reports as -1)."""

    def __init__(self, fn, batched: bool = False):
        self.fn, self.batched = fn, batched

    def score(self, prompts: list, completions: list) -> list[float]:
        if self.batched:
            return [float(v) for v in self.fn(prompts=list(prompts), completions=list(completions))]
        return [float(self.fn(p, c)) for p, c in zip(prompts, completions)]

    @staticmethod
    def prefer(first, second):
        return 1.0 if first > second else 0.0 if first < second else 0.5


class RewardModelJudge(_PointwiseJudge):
    """A reward model (a directory or a loaded sequence classifier with its tokenizer): ``score`` is its scalar,
    a pair's probability ``sigmoid(r_first - r_second)``."""

    def __init__(self, model_or_dir, tokenizer=None, batch_size: int = 32):
        self.scorer = RewardModelScorer(model_or_dir, tokenizer, batch_size=batch_size)

    def score(self, prompts: list, completions: list) -> list[float]:
        return self.scorer(prompts, completions)

    @staticmethod
    def prefer(first, second):
        return 1.0 / (1.0 + math.exp(second - first))


DEFAULT_TEMPLATE = ("Which answer to the question is better?\nQuestion: {prompt}\nAnswer A: {first}\n"
                    "Answer B: {second}\nThe better answer is")


class LLMJudge(BasePairwiseJudge):
    """A local causal LM as the judge. ``template`` is filled with ``prompt``, ``first`` and ``second``; the
    verdict is the next-token distribution over the two ``choices`` (default " A" and " B", each one token):
    ``p(first) = softmax(logit_A, logit_B)[0]``. Each pair is also judged with the answers swapped and the two
    estimates of ``p(first is better)`` are averaged (``swap=True``), which cancels a judge's position bias."""

    def __init__(self, model, tokenizer, template: str = DEFAULT_TEMPLATE, choices=(" A", " B"), swap: bool = True,
                 batch_size: int = 8):
        ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
        if len(ids) != 2 or any(len(i) != 1 for i in ids) or ids[0] == ids[1]:
            raise ValueError(f"LLMJudge needs two choices that are one distinct token each; {list(choices)} "
                             f"tokenize to {ids}. Pick other choices (e.g. ' A', ' B' or ' 1', ' 2').")
        for key in ("{prompt}", "{first}", "{second}"):
            if key not in template:
                raise ValueError(f"The judge template must contain {key}.")
        self.model, self.tokenizer, self.template, self.swap = model, tokenizer, template, swap
        self.choice_ids, self.batch_size = [i[0] for i in ids], batch_size

    @torch.no_grad()
    def first_probability(self, prompts: list, pairs: list) -> list[float]:
        """p(first is better) in the order shown, from one forward per batch (no swap)."""
        texts = [self.template.format(prompt=p, first=a, second=b) for p, (a, b) in zip(prompts, pairs)]
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(texts), self.batch_size):
            ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[start: start + self.batch_size]]
            input_ids, attention = pad_with_attention(ids, self.tokenizer.pad_token_id, side="left", device=device)
            positions = (attention.cumsum(1) - 1).clamp(min=0)
            logits = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                                use_cache=False).logits[:, -1].float()
            two = torch.log_softmax(logits[:, self.choice_ids], dim=-1)
            out += two[:, 0].exp().tolist()
        return out

    def scores(self, prompts, pairs):
        direct = self.first_probability(prompts, pairs)
        if not self.swap:
            return direct
        swapped = self.first_probability(prompts, [(b, a) for a, b in pairs])
        return [(p + 1.0 - q) / 2 for p, q in zip(direct, swapped)]


# ---- what many verdicts say ---------------------------------------------------------------------------------


@dataclass
class WinRate:
    rate: float  # wins + ties/2, over judged pairs
    low: float  # Wilson score interval at `confidence`
    high: float
    n: int  # judged pairs (failed verdicts, -1 without a tie meaning, are not counted)
    confidence: float = 0.95


def win_rate(outcomes: list[float], confidence: float = 0.95) -> WinRate:
    """Win rate of outcomes in [0, 1] (1 a win, 0 a loss, 0.5 a tie; a soft judge's probabilities are fine) with a
    Wilson score interval (which keeps its coverage near 0 and 1, unlike the normal interval)."""
    values = [float(v) for v in outcomes if v == v]
    if not values:
        raise ValueError("win_rate needs at least one judged pair.")
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise ValueError("win_rate takes outcomes in [0, 1] (1 win, 0 loss, 0.5 tie).")
    n, p = len(values), sum(values) / len(values)
    z = _normal_quantile(0.5 + confidence / 2)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return WinRate(p, max(0.0, centre - half), min(1.0, centre + half), n, confidence)


def _normal_quantile(q: float) -> float:
    return math.sqrt(2.0) * torch.erfinv(torch.tensor(2 * q - 1, dtype=torch.float64)).item()


def bradley_terry(comparisons: list[tuple[int, int, float]], n_models: int, iterations: int = 500,
                  prior: float = 0.5) -> list[float]:
    """Bradley-Terry strengths from ``(i, j, outcome)`` comparisons (outcome 1: i beat j, 0: j beat i, 0.5 a tie),
    fitted by Hunter's MM algorithm, as Elo-scale ratings (400 log10 strength, mean 1000). ``prior`` adds that
    many virtual ties of every model against every other, so a model that never lost stays finite."""
    wins = torch.full((n_models, n_models), prior / max(1, n_models - 1), dtype=torch.float64)
    wins.fill_diagonal_(0)
    for i, j, outcome in comparisons:
        wins[i, j] += outcome
        wins[j, i] += 1.0 - outcome
    games = wins + wins.T
    strength = torch.ones(n_models, dtype=torch.float64)
    for _ in range(iterations):
        denom = (games / (strength[:, None] + strength[None, :])).sum(1)
        strength = wins.sum(1) / denom
        strength = strength / torch.exp(torch.log(strength).mean())
    ratings = 400.0 * torch.log10(strength)
    return (ratings - ratings.mean() + 1000.0).tolist()


def rating_intervals(comparisons: list[tuple[int, int, float]], n_models: int, samples: int = 200,
                     confidence: float = 0.95, seed: int = 0) -> list[tuple[float, float]]:
    """Percentile bootstrap intervals of ``bradley_terry`` ratings: comparisons resampled with replacement."""
    g = torch.Generator().manual_seed(seed)
    draws = []
    for _ in range(samples):
        pick = torch.randint(len(comparisons), (len(comparisons),), generator=g).tolist()
        draws.append(bradley_terry([comparisons[k] for k in pick], n_models, iterations=200))
    table = torch.tensor(draws, dtype=torch.float64)
    lo, hi = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    return list(zip(table.quantile(lo, dim=0).tolist(), table.quantile(hi, dim=0).tolist()))


# ---- comparing models and judging during training -----------------------------------------------------------


def sample_completions(model, tokenizer, prompts: list, max_new_tokens: int = 24, seed: int = 0) -> list:
    """Completion texts of ``model`` for ``prompts``, sampled at temperature 1 under ``seed`` (the caller's RNG is
    left alone; every model sees the same prompts in the same order)."""
    from .policy import evaluate_policy

    return [s["completion"] for s in
            evaluate_policy(model, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed)["samples"]]


def compare_models(completions: dict, prompts: list, judge: BasePairwiseJudge, baseline: str | None = None,
                   seed: int = 0) -> dict:
    """Every model's win rate against ``baseline`` (default: the first) and Bradley-Terry ratings of all of them
    from every pair of models on every prompt. ``completions``: model name -> its completions of ``prompts``.
    Returns ``{"win_rates": {name: WinRate}, "ratings": {name: (rating, low, high)}, "table": markdown}``."""
    names = list(completions)
    baseline = names[0] if baseline is None else baseline
    if baseline not in completions:
        raise ValueError(f"baseline {baseline!r} is not one of the models {names}.")
    comparisons, verdicts = [], {}
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            pairs = [[x, y] for x, y in zip(completions[names[a]], completions[names[b]])]
            scores = judge.judge(prompts, pairs, shuffle_order=True, return_scores=True, seed=seed + a * 31 + b)
            verdicts[names[a], names[b]] = scores
            comparisons += [(a, b, _outcome(s)) for s in scores]
    rates = {}
    for name in names:
        if name == baseline:
            continue
        scores = verdicts.get((name, baseline)) or [1 - s for s in verdicts[baseline, name]]
        rates[name] = win_rate([_outcome(s) for s in scores])
    ratings = bradley_terry(comparisons, len(names))
    intervals = rating_intervals(comparisons, len(names), seed=seed)
    rated = {n: (r, lo, hi) for n, r, (lo, hi) in zip(names, ratings, intervals)}
    lines = [f"| model | win rate vs {baseline} (95% CI) | rating (95% CI) |", "|---|---:|---:|"]
    for name in sorted(names, key=lambda n: -rated[n][0]):
        rate = rates.get(name)
        cell = "baseline" if rate is None else f"{rate.rate:.1%} ({rate.low:.1%} to {rate.high:.1%}), n={rate.n}"
        r, lo, hi = rated[name]
        lines.append(f"| {name} | {cell} | {r:.0f} ({lo:.0f} to {hi:.0f}) |")
    return {"win_rates": rates, "ratings": rated, "table": "\n".join(lines)}


class WinRateCallback(TrainerCallback):
    """TRL's ``WinRateCallback`` for every posttrain trainer: at each evaluation, the trained model's completions
    of the evaluation prompts are judged against those of the model as it was when training began, and the win
    rate is logged as ``eval_win_rate`` (with ``use_soft_judge``, the mean probability as ``eval_avg_win_prob``).
    ``prompts`` defaults to the trainer's evaluation prompts (the ``prompt`` column of ``eval_dataset``)."""

    def __init__(self, judge: BasePairwiseJudge, trainer, generation_config=None, num_prompts: int | None = None,
                 shuffle_order: bool = True, use_soft_judge: bool = False, prompts: list | None = None,
                 max_new_tokens: int = 24, seed: int = 0):
        self.judge, self.trainer, self.shuffle_order, self.use_soft_judge = judge, trainer, shuffle_order, use_soft_judge
        self.max_new_tokens = getattr(generation_config, "max_new_tokens", None) or max_new_tokens
        prompts = prompts if prompts is not None else _eval_prompts(trainer)
        if not prompts:
            raise ValueError("WinRateCallback needs evaluation prompts: give the trainer an eval_dataset with a "
                             "'prompt' column, or pass prompts=[...].")
        self.prompts, self.seed, self.reference = list(prompts)[:num_prompts], seed, None

    def _sample(self):
        tokenizer = getattr(self.trainer, "processing_class", None) or self.trainer.tokenizer
        return sample_completions(self.trainer.model, tokenizer, self.prompts, self.max_new_tokens, self.seed)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.reference is None:  # the starting model's completions: what the trained one must beat
            self.reference = self._sample()

    def on_evaluate(self, args, state, control, **kwargs):
        if self.reference is None:
            self.reference = self._sample()
        current = self._sample()
        pairs = [[ref, new] for ref, new in zip(self.reference, current)]
        scores = self.judge.judge(self.prompts, pairs, shuffle_order=self.shuffle_order, return_scores=True,
                                  seed=self.seed + state.global_step)
        wins = [1.0 - s for s in scores]  # s = p(reference better)
        metrics = {"eval_win_rate": sum(w > 0.5 for w in wins) / len(wins)}
        if self.use_soft_judge:
            metrics["eval_avg_win_prob"] = sum(wins) / len(wins)
        self.trainer.log(metrics)


def _eval_prompts(trainer) -> list | None:
    prompts = getattr(trainer, "eval_prompts", None)  # online trainers
    if prompts is not None:
        return list(prompts.values)
    dataset = getattr(trainer, "eval_dataset", None)
    if dataset is not None and "prompt" in getattr(dataset, "column_names", []):
        return list(dataset["prompt"])
    return None


# ---- the command line: posttrain judge --------------------------------------------------------------------


def make_judge(spec: str, choices=(" A", " B")) -> BasePairwiseJudge:
    """A judge from a command-line spec: ``llm=DIR`` (a causal LM as the judge), ``api=BASE_URL#MODEL`` (a
    chat-completions API; ``api=MODEL`` uses ``$OPENAI_BASE_URL`` or OpenAI's, ``api=BASE_URL`` its default model),
    a reward model directory, or a reward spec (a built-in name such as ``sentiment``, or ``module:function``) used
    as a rule."""
    import os

    from ..models.loading import load_model, load_tokenizer
    from ..rewards.base import resolve_reward

    if spec.startswith("llm="):
        path = spec[len("llm="):]
        return LLMJudge(load_model(path), load_tokenizer(path), choices=tuple(choices))
    if spec.startswith("api="):
        from .api_judge import APIJudge

        target = spec[len("api="):]
        base_url, _, model = target.rpartition("#") if "#" in target else \
            (target, "", "") if "://" in target else ("", "", target)
        return APIJudge(**({"model": model} if model else {}), base_url=base_url or None, choices=tuple(choices))
    if os.path.isdir(spec):
        return RewardModelJudge(spec)
    return RuleJudge(resolve_reward(spec), batched=True)


def judge_main(argv: list[str]) -> int:
    """``posttrain judge``: sample each model's completions of the prompts, judge every pair, print win rates
    against the baseline and Bradley-Terry ratings, and write them (markdown, JSON and a plot) to --output_dir."""
    import argparse
    import json
    import os

    from ..data.prompts import load_prompts
    from ..models.loading import load_model, load_tokenizer
    from ..run import quiet_loading

    parser = argparse.ArgumentParser(prog="posttrain judge", description=(
        "Sample each model's completions of the prompts, judge every pair of models, print win rates against the "
        "baseline and Bradley-Terry ratings, and write them (judge.md, judge.json, ratings.png) to --output_dir."))
    parser.add_argument("--models", nargs="+", required=True, help="Two or more model directories (or tiny: names), "
                        "optionally named NAME=DIR. The first is the baseline unless --baseline says otherwise.")
    parser.add_argument("--prompts", required=True, help="A dataset with a 'prompt' column (.jsonl/.json/.csv/"
                        ".parquet or a dataset directory).")
    parser.add_argument("--judge", required=True, help="llm=DIR (a causal LM judging by the log-probs of the two "
                        "answer tokens, both orders), api=BASE_URL#MODEL (an OpenAI-compatible chat-completions API "
                        "judging by the top log-probs of its one-token reply, both orders; api=MODEL uses "
                        "$OPENAI_BASE_URL or OpenAI's; the key is read from $OPENAI_API_KEY), a reward model "
                        "directory, or a reward spec used as a rule (a built-in name such as sentiment, or "
                        "module:function).")
    parser.add_argument("--choices", nargs=2, default=[" A", " B"], help="The LLM judge's two answer tokens.")
    parser.add_argument("--baseline", default=None, help="The model the win rates are against (default: the first).")
    parser.add_argument("--num_prompts", type=int, default=None, help="Use only the first N prompts.")
    parser.add_argument("--max_new_tokens", type=int, default=24, help="Tokens per sampled completion.")
    parser.add_argument("--seed", type=int, default=0, help="Sampling and order-shuffling seed.")
    parser.add_argument("--output_dir", default=None, help="Write judge.md, judge.json and ratings.png here.")
    args = parser.parse_args(argv)
    named = [m.split("=", 1) if "=" in m and not m.startswith("tiny:") else [os.path.basename(m.rstrip("/")) or m, m]
             for m in args.models]
    if len(named) < 2 or len({n for n, _ in named}) < len(named):
        parser.error("--models needs two or more models with distinct names (use NAME=DIR).")
    if args.num_prompts is not None and args.num_prompts < 1:
        parser.error("--num_prompts must be >= 1.")
    with quiet_loading():
        tokenizer = load_tokenizer(named[0][1])
        prompts = load_prompts(args.prompts, tokenizer, None, "posttrain judge").values[:args.num_prompts]
        completions = {name: sample_completions(load_model(path), load_tokenizer(path), prompts,
                                                args.max_new_tokens, args.seed) for name, path in named}
        result = compare_models(completions, prompts, make_judge(args.judge, args.choices), args.baseline, args.seed)
    print(result["table"])
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "judge.md"), "w", encoding="utf-8") as fh:
            fh.write(f"# Judged by {args.judge} on {len(prompts)} prompts\n\n{result['table']}\n")
        with open(os.path.join(args.output_dir, "judge.json"), "w", encoding="utf-8") as fh:
            json.dump({"judge": args.judge, "prompts": len(prompts),
                       "win_rates": {k: vars(v) for k, v in result["win_rates"].items()},
                       "ratings": result["ratings"], "completions": completions}, fh, indent=1)
        from .report import plot_ratings  # one ratings plot, the demo report's

        baseline = args.baseline or named[0][0]
        plot_ratings({"judges": {args.judge: {"ratings": result["ratings"], "baseline": baseline}}},
                     os.path.join(args.output_dir, "ratings.png"))
        print(f"wrote {args.output_dir}/judge.md, judge.json and ratings.png")
    return 0
