"""``posttrain demo``: the whole RLHF pipeline, offline, on a tiny Llama, with a report.

1. pretrain  a tiny Llama-style model from scratch on the shipped corpus of short reviews
2. sft       on review openings -> continuations of mixed sentiment
3. reward    a reward model (from the SFT model) on preference pairs: the positive continuation wins
4. ppo       PPO against the reward model with a KL penalty to the SFT model, at several KL weights
5. dpo       DPO from the SFT model on the same pairs, at several betas
6. report    report.html and PNG plots: reward and KL over PPO steps, loss curves, the reward-vs-KL
             frontier of PPO and DPO (the DPO paper's IMDb experiment in miniature), samples, and win
             rates against SFT and Bradley-Terry ratings of every model by two judges (the reward model
             and the sentiment rule), from the stored held-out samples

Every model is evaluated on review openings that no stage trains on: reward-model score, sentiment
(VADER), KL to the SFT model and sample texts. Stages can be run alone (``--stage ppo``); each one
reads the outputs of the stages before it from ``--output_dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib import resources

import torch
from transformers import TrainerCallback

from .card import append_card_section
from .run import RewardArguments, quiet_loading, run_training, summary
from .config import DataArguments, ModelArguments
from .data import toy
from .eval import evaluate_policy
from .eval.judges import RewardModelJudge, RuleJudge, compare_models
from .models.loading import load_model, load_tokenizer
from .rewards import RewardModelScorer
from .rewards.builtin import sentiment
from .trainers import DPOConfig, PPOConfig, RewardConfig, SFTConfig

STAGES = ("pretrain", "sft", "reward", "ppo", "dpo", "report")
NEEDS = {"sft": ("pretrain",), "reward": ("sft",), "ppo": ("sft", "reward"), "dpo": ("sft", "reward"),
         "report": ("sft", "reward")}
STEPS = {"pretrain": 400, "sft": 150, "reward": 150, "ppo": 40, "dpo": 120}  # optimizer steps per stage
PPO_OPTIMIZER_STEPS = 8  # per PPO step of the demo: a generation of 16 rollouts, 4 epochs x 2 micro-batches
LEARNING_RATES = {"pretrain": 1e-3, "sft": 5e-4, "reward": 5e-4, "ppo": 1e-4, "dpo": 1e-4}
EVAL_PROMPTS = toy.held_out_openings(40)
MAX_NEW_TOKENS = 24
PROBES = 4  # evaluations along each PPO / DPO run (the last one after saving): points of its frontier path
JUDGE_BASELINE = "SFT"  # the model every other one's win rate is against


def _write_jsonl(rows: list[dict], path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def _write_json(value, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(value, fh, indent=1)
    os.replace(tmp, path)


def write_data(data_dir: str) -> dict[str, str]:
    """The demo's datasets as JSONL files; no row starts with a held-out opening."""
    held = set(EVAL_PROMPTS)
    corpus = resources.files("posttrain").joinpath("assets/reviews.txt").read_text(encoding="utf-8")
    keep = lambda rows: [r for r in rows if r["prompt"] not in held]  # noqa: E731
    return {
        "pretrain": _write_jsonl([{"text": line} for line in corpus.splitlines() if line],
                                 os.path.join(data_dir, "pretrain.jsonl")),
        "sft": _write_jsonl(keep(toy.prompt_completion(1200, seed=1, positive=None)),
                            os.path.join(data_dir, "sft.jsonl")),
        "preferences": _write_jsonl(keep(toy.preference_pairs(1200, seed=2)),
                                    os.path.join(data_dir, "preferences.jsonl")),
        "prompts": _write_jsonl(keep(toy.review_prompts(1200, seed=3)), os.path.join(data_dir, "prompts.jsonl")),
        # the held-out openings every model is evaluated on, e.g. for `posttrain judge --prompts`
        "eval_prompts": _write_jsonl([{"prompt": p} for p in EVAL_PROMPTS], os.path.join(data_dir, "eval_prompts.jsonl")),
    }


def machine() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()}), {device}; "
            f"torch {torch.__version__}")


class FrontierProbe(TrainerCallback):
    """Evaluates the model being trained every ``every`` steps: the points of its reward-vs-KL path.
    A ``TrainerCallback``, for DPO and PPO alike. Evaluation sampling
    runs under its own seed and leaves the training RNG alone, so probing does not change training."""

    def __init__(self, demo: "Demo", every: int, unit: int = 1):
        # unit: optimizer steps per reported step (PPO reports generations: 8 optimizer steps each)
        self.demo, self.every, self.unit, self.points = demo, every, unit, []

    def probe(self, step: int, model, tokenizer) -> None:
        if step % self.every == 0:
            result = self.demo.measure(model, tokenizer)
            self.points.append({"step": step, **{k: result[k] for k in ("rm_score", "sentiment", "kl", "length")}})

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step < state.max_steps and state.global_step % self.unit == 0:  # final: after saving
            self.probe(state.global_step // self.unit, getattr(model, "module", model), processing_class)


class Demo:
    """The stages, in order; each writes ``<output_dir>/<stage>/stage.json`` for the report."""

    def __init__(self, args):
        self.args, self.out = args, args.output_dir
        self.data = write_data(os.path.join(self.out, "data"))
        self._judges = None  # (reward-model scorer, SFT model) for evaluation, loaded on first use

    def path(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)

    def steps(self, stage: str) -> int:
        return self.args.steps or STEPS[stage]

    def common(self, stage: str, out: str | None = None) -> dict:
        """Settings of the offline (transformers.Trainer) stages."""
        steps = self.steps(stage)
        return dict(output_dir=out or self.path(stage), max_steps=steps, learning_rate=LEARNING_RATES[stage],
                    per_device_train_batch_size=16, logging_steps=max(steps // 20, 1), save_steps=steps,
                    lr_scheduler_type="cosine", warmup_steps=0, seed=self.args.seed, report_to="none",
                    disable_tqdm=self.args.quick, max_length=96)

    # ---- evaluation on held-out openings --------------------------------------------------------------
    def measure(self, model, tokenizer, with_rm: bool = True) -> dict:
        """Sentiment and samples; with the reward model also its score and the KL to the SFT model."""
        rewards, reference = {"sentiment": sentiment}, None
        if with_rm:  # once the reward model exists (loaded once per stage)
            if self._judges is None:
                self._judges = RewardModelScorer(self.path("reward")), load_model(self.path("sft"), "causal-lm")
            rewards["rm_score"], reference = self._judges
        result = evaluate_policy(model, tokenizer, EVAL_PROMPTS, rewards, reference=reference,
                                 max_new_tokens=MAX_NEW_TOKENS, seed=self.args.seed)
        if "kl_sum" in result:  # the frontier's KL axis is in nats per completion
            result["kl"] = result.pop("kl_sum")
        return result

    def sft_evaluation(self) -> dict:
        """The SFT model's held-out evaluation, made by the reward stage."""
        with open(self.path("reward", "stage.json"), encoding="utf-8") as fh:
            return next(e for e in json.load(fh)["evaluations"] if e["name"] == "sft")

    def evaluate(self, name: str, method: str, model_dir: str, label=None, main=True, with_rm=True) -> dict:
        """Evaluate a saved model and add the result to its model card."""
        result = self.measure(load_model(model_dir, "causal-lm"), load_tokenizer(model_dir), with_rm)
        result.update(name=name, method=method, label=label, main=main)
        if with_rm:
            append_card_section(model_dir, "Held-out evaluation (posttrain demo)", [
                f"On {len(EVAL_PROMPTS)} review openings no stage trained on, one sample each at temperature 1:",
                "", f"- reward-model score: {result['rm_score']:.4f}",
                f"- sentiment (VADER): {result['sentiment']:.4f}",
                f"- KL to the SFT model: {result['kl']:.4f} nats per completion",
                f"- completion length: {result['length']:.1f} tokens"])
        return result

    @staticmethod
    def eval_line(result: dict, before: dict | None = None) -> str:
        """Held-out means (``before -> after`` when ``before`` is given) and the first sample."""
        names = {"rm_score": "RM score", "sentiment": "sentiment", "kl": "KL to SFT"}
        parts = [f"held-out {name} " + (f"{before[k]:+.3f} -> " if before and k != "kl" else "") + f"{result[k]:+.3f}"
                 for k, name in names.items() if k in result]
        sample = result["samples"][0]
        return " | ".join(parts) + f" | e.g. {sample['prompt']!r} -> {sample['completion']!r}"

    # ---- the stages ------------------------------------------------------------------------------------
    def train(self, command: str, model: str, dataset: str, config, eval_fraction: float = 0.0, callbacks=None):
        start = time.perf_counter()
        trainer = run_training(command, ModelArguments(model_name_or_path=model),
                               DataArguments(dataset_name=dataset, eval_fraction=eval_fraction), config, callbacks,
                               bar_only=True)
        history = trainer.state.log_history
        return trainer, history, summary(command, trainer, time.perf_counter() - start)

    def pretrain(self) -> dict:
        config = SFTConfig(**self.common("pretrain"))
        _, history, line = self.train("sft", self.args.model, self.data["pretrain"], config)
        sample = self.evaluate("pretrain", "pretrain", self.path("pretrain"), with_rm=False)
        return {"summary": line + " | " + self.eval_line(sample), "history": history}

    def sft(self) -> dict:
        config = SFTConfig(**self.common("sft"))
        _, history, line = self.train("sft", self.path("pretrain"), self.data["sft"], config)
        sample = self.evaluate("sft", "sft", self.path("sft"), with_rm=False)
        return {"summary": line + " | " + self.eval_line(sample), "history": history}

    def reward(self) -> dict:
        config = RewardConfig(**self.common("reward"))
        _, history, line = self.train("reward", self.path("sft"), self.data["preferences"], config, 0.1)
        evaluations = [self.evaluate("pretrain", "pretrain", self.path("pretrain")),
                       self.evaluate("sft", "sft", self.path("sft"))]
        return {"summary": line + " | SFT " + self.eval_line(evaluations[1]), "history": history,
                "evaluations": evaluations}

    def ppo(self) -> dict:
        def config(kl_coef: float, out: str) -> PPOConfig:
            # Completions of at most 16 tokens: SFT continuations end after ~11, a longer budget invites run-ons.
            # A fixed KL weight (no adaptive target). Each PPO step (a generation of 16 rollouts) is 8 optimizer
            # steps (4 epochs x 2 micro-batches of 8); warm-up for a quarter of the run.
            steps = self.steps("ppo") * PPO_OPTIMIZER_STEPS
            ppo = PPOConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=8, steps_per_generation=2,
                            num_iterations=4, max_completion_length=16, learning_rate=LEARNING_RATES["ppo"],
                            init_kl_coef=kl_coef, target_kl=None, lr_scheduler_type="cosine", warmup_steps=steps // 4,
                            seed=self.args.seed, logging_steps=1, save_strategy="no", report_to="none",
                            disable_tqdm=self.args.quick)
            ppo.reward_args = RewardArguments(reward_funcs=[self.path("reward")])  # PPO against the reward model
            return ppo

        return self.sweep("ppo", "kl_coef", self.args.ppo_kl_coefs, config, self.data["prompts"])

    def dpo(self) -> dict:
        def config(beta: float, out: str) -> DPOConfig:
            return DPOConfig(beta=beta, **self.common("dpo", out))

        return self.sweep("dpo", "beta", self.args.dpo_betas, config, self.data["preferences"])

    def sweep(self, method: str, name: str, values: list[float], make_config, dataset: str) -> dict:
        """One run of ``method`` from the SFT model per value of ``name``, each probed along the way: its
        frontier path. The middle value is the run whose samples the report shows."""
        runs, evaluations, lines = [], [], []
        for value in values:
            label, out = f"{name}={value:g}", self.path(method, f"{name}-{value:g}")
            config = make_config(value, out)
            unit = PPO_OPTIMIZER_STEPS if method == "ppo" else 1
            steps = config.max_steps // unit
            probe = FrontierProbe(self, max(steps // PROBES, 1), unit)
            _, history, _ = self.train(method, self.path("sft"), dataset, config, callbacks=[probe])
            final = self.evaluate(f"{method} {label}", method, out, label, main=value == values[len(values) // 2])
            path = [*probe.points, {"step": steps, **{k: final[k] for k in ("rm_score", "sentiment",
                                                                                          "kl", "length")}}]
            evaluations.append(final)
            runs.append({"label": label, "setting": {name: value}, "dir": os.path.relpath(out, self.out),
                         "history": history, "path": path})
            lines.append(f"{label}: {self.eval_line(final, before=self.sft_evaluation())}")
        return {"summary": "\n   ".join(lines), "runs": runs, "evaluations": evaluations,
                "main": next(e["label"] for e in evaluations if e["main"])}

    def report(self) -> dict:
        from .eval.report import write_report

        results = {"model": self.args.model, "machine": machine(), "eval_prompts": len(EVAL_PROMPTS),
                   "stages": {}, "evaluations": []}
        for stage in STAGES[:-1]:
            path = self.path(stage, "stage.json")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as fh:
                    record = json.load(fh)
                results["evaluations"] += record.pop("evaluations", [])
                results["stages"][stage] = record
        results["total_seconds"] = sum(s["seconds"] for s in results["stages"].values())
        results["judges"], note = self.judge_models(results["evaluations"])
        if note:
            results["judges_not_run"] = note
        _write_json(results, self.path("results.json"))
        html = write_report(results, self.out)
        lines = [f"wrote {html} and its plots ({results['total_seconds']:.0f}s of training and evaluation in "
                 f"{len(results['stages'])} stages)"]
        for judge, verdict in results["judges"].items():
            rates = verdict["win_rates"]
            lines.append(f"win rate vs {JUDGE_BASELINE} ({judge}): " + ", ".join(
                f"{name} {r['rate']:.0%}" for name, r in rates.items()))
        return {"summary": "\n   ".join(lines + ([f"judges not run: {note}"] if note else []))}

    @staticmethod
    def model_name(evaluation: dict) -> str:
        """A model's name in the win-rate table: "SFT", "PPO kl_coef=0.3", "DPO beta=1"."""
        method = evaluation.get("method") or evaluation.get("name")
        base = {"pretrain": "Pretrain", "sft": "SFT", "ppo": "PPO", "dpo": "DPO"}.get(method, str(method))
        return f"{base} {evaluation['label']}" if evaluation.get("label") else base

    def judge_models(self, evaluations: list[dict]) -> tuple[dict, str | None]:
        """Win rates against SFT and Bradley-Terry ratings of every evaluated model, by the reward model and by
        the sentiment rule, from the stored held-out samples (every model completed the same prompts under the
        same seed: nothing is sampled again). Returns ``({judge: {"baseline", "prompts", "win_rates",
        "ratings", "table"}}, None)`` in ``results.json`` form, or ``({}, why not)``."""
        completions, prompts = {}, None
        for e in evaluations:
            samples = e.get("samples") or []
            if prompts is None and samples:
                prompts = [s["prompt"] for s in samples]
            if samples and [s["prompt"] for s in samples] == prompts:
                completions[self.model_name(e)] = [s["completion"] for s in samples]
        if len(completions) < 2:
            return {}, f"fewer than two evaluated models ({len(completions)})"
        if JUDGE_BASELINE not in completions:
            return {}, f"no evaluated {JUDGE_BASELINE} model to compare against"
        if not os.path.exists(self.path("reward", "config.json")):
            return {}, f"no reward model in {self.path('reward')}"
        judges = {"reward model": RewardModelJudge(self.path("reward")),
                  "sentiment rule": RuleJudge(sentiment, batched=True)}
        out = {}
        for name, judge in judges.items():
            result = compare_models(completions, prompts, judge, baseline=JUDGE_BASELINE, seed=self.args.seed)
            out[name] = {"baseline": JUDGE_BASELINE, "prompts": len(prompts),
                         "win_rates": {k: vars(v) for k, v in result["win_rates"].items()},
                         "ratings": {k: list(v) for k, v in result["ratings"].items()}, "table": result["table"]}
        return out, None

    def first_missing(self, stage: str) -> str | None:
        """The stage to run before ``stage`` can: its missing input, or that input's own missing input."""
        for need in NEEDS.get(stage, ()):
            if not os.path.exists(self.path(need, "stage.json")):
                return self.first_missing(need) or need
        return None

    def run(self, stage: str) -> int:
        missing = self.first_missing(stage)
        if missing:
            print(f"Stage {stage!r} needs the outputs of earlier stages in {self.out}; stage {missing!r} has not "
                  f"been run there. Run first: posttrain demo --stage {missing} --output_dir {self.out}")
            return 1
        print(f"== stage {stage} ==", flush=True)
        start = time.perf_counter()
        record = getattr(self, stage)()
        if stage != "report":
            record["seconds"] = time.perf_counter() - start
            _write_json(record, self.path(stage, "stage.json"))
        print(f"   {stage}: {record['summary']}", flush=True)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posttrain demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/demo", help="Where every stage writes (default runs/demo).")
    parser.add_argument("--stage", choices=["all", *STAGES], default="all",
                        help="Run one stage alone; it reuses the outputs of earlier stages in --output_dir.")
    parser.add_argument("--model", default="tiny:llama-5m",
                        help="Model to pretrain: a tiny:<arch>[-size] name, built from scratch and seeded "
                             "(default tiny:llama-5m), or a local model directory to start from.")
    parser.add_argument("--steps", type=int, default=None,
                        help="Training steps for every stage, e.g. 20 for a quick look (a PPO step is one batch of 16 "
                             "rollouts; default: each stage's own, "
                             + ", ".join(f"{k} {v}" for k, v in STEPS.items()) + ").")
    parser.add_argument("--ppo_kl_coefs", type=float, nargs="+", default=[0.1, 0.3, 1.0],
                        help="KL penalty weights of the PPO runs (one frontier point each; the middle one is "
                             "the run whose samples the report shows).")
    parser.add_argument("--dpo_betas", type=float, nargs="+", default=[0.3, 1.0, 3.0],
                        help="DPO betas (one frontier point each; the middle one's samples are shown).")
    parser.add_argument("--seed", type=int, default=0,
                        help="Seed of every stage and of evaluation sampling (default 0).")
    parser.add_argument("--quick", action="store_true", help="No progress bars (for tests and CI logs).")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}.")
    if min(args.ppo_kl_coefs) < 0 or min(args.dpo_betas) <= 0:
        parser.error("--ppo_kl_coefs must be >= 0 and --dpo_betas > 0.")
    # A progress bar per training run and a result line per stage; no bars for loading data and weights.
    with quiet_loading():
        demo = Demo(args)
        for stage in STAGES if args.stage == "all" else [args.stage]:
            code = demo.run(stage)
            if code:
                return code
        return 0
