#!/usr/bin/env python
"""Online RL throughput of posttrain against TRL: GRPO and RLOO vs TRL 1.x, value-head PPO vs TRL 0.11.4.

Same seeded weights (a fresh copy per run), same fixed-length prompts, same G and prompts per step,
completions forced to exactly ``max_new_tokens`` tokens on both sides (checked every step), same
sampling, beta, optimizer steps per generation batch, fp32 and reward. Warm-up steps are not timed;
rounds alternate which library goes first; throughput = timed completions / the sum over timed steps
of each step's fastest round. The settings are written out with the table (``markdown()``).

    python benchmarks/online.py [--setting short|long] [--steps N] [--warmup W] [--repeats R]
                                [--only grpo,rloo,ppo] [--output F] [--quick]

``--setting long`` is the shape of real GRPO/RLOO work: ``tiny:llama-50m``, prompts of 256 tokens (PPO: 128),
64-token completions, G = 8. It also times each phase of a step (``Phases``) on both sides.
"""

from __future__ import annotations

import os

for _k, _v in dict(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false",
                   TRANSFORMERS_VERBOSITY="error", HF_DATASETS_DISABLE_PROGRESS_BARS="1").items():
    os.environ.setdefault(_k, _v)  # offline and quiet, before transformers / trl are imported

import argparse, collections, contextlib, importlib.util, json, shlex, subprocess, sys, tempfile, time  # noqa: E401,E402
from dataclasses import dataclass  # noqa: E402

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from posttrain import (GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer, RLOOConfig, RLOOTrainer,  # noqa: E402
                       load_model, load_tokenizer)
from posttrain.data import toy  # noqa: E402
from posttrain.data.tokenize import tokenize_prompt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
_spec = importlib.util.spec_from_file_location("posttrain_benchmarks_run", os.path.join(HERE, "run.py"))
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench
_spec.loader.exec_module(bench)  # StepClock, _quiet, machine(): the same helpers as BENCHMARKS.md's rows

transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars between the log lines
MODEL, TOKENIZER, SEED = "tiny:llama-5m", "tiny:llama", 0
FAMILIES = ("grpo", "rloo", "ppo")
S = dict(prompts=8, generations=4, max_new_tokens=32, group_lr=1e-6, rloo_beta=0.05,  # GRPO / RLOO
         ppo_batch=16, ppo_mini_batch=8, ppo_epochs=4, ppo_lr=1e-5, ppo_kl_coef=0.2,  # PPO (TRL 0.11.4's script)
         group_prompt_tokens=None, ppo_prompt_tokens=None)  # None: the toy arithmetic prompts' own length
LONG = dict(model="tiny:llama-50m", prompts=2, generations=8, max_new_tokens=64, group_prompt_tokens=256,
            ppo_prompt_tokens=128, steps=2, warmup=1)
DEFAULT_STEPS, DEFAULT_WARMUP, QUICK = 8, 2, dict(steps=2, warmup=1, repeats=1)


class Phases:
    """Seconds per phase of a step: ``wrap(obj, name, phase)`` times every call of ``obj.name`` (calls made while
    another timed call runs count for the outer one only). ``per_step(n)`` = mean seconds per step."""

    def __init__(self):
        self.seconds, self._depth = collections.defaultdict(float), 0

    def wrap(self, obj, name: str, phase: str) -> None:
        inner = getattr(obj, name)

        def timed(*a, **kw):
            if self._depth:
                return inner(*a, **kw)
            self._depth += 1
            start = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                self.seconds[phase] += time.perf_counter() - start
                self._depth -= 1

        timed.__wrapped__ = inner
        setattr(obj, name, timed)

    @contextlib.contextmanager
    def timing(self, phase: str):
        if self._depth:
            yield
            return
        self._depth += 1
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start
            self._depth -= 1

    def per_step(self, total_seconds: float, steps: int) -> dict:
        """Mean seconds per step of each phase; "backward, optimizer, rest" is what no phase covers."""
        out = {k: v / steps for k, v in self.seconds.items()}
        out["backward, optimizer, rest"] = (total_seconds - sum(self.seconds.values())) / steps
        return out
LABELS = {"grpo": "GRPO, beta 0, no reference (completions/s)",
          "rloo": f"RLOO, beta {S['rloo_beta']}, frozen-copy reference (completions/s)",
          "ppo": "PPO, value head, frozen-copy reference, vs TRL 0.11.4 (episodes/s)"}


def distinct_reward(prompts, completions, completion_ids=None, **kwargs):
    """Fraction of distinct token ids in each completion: deterministic, ~free, the same on both sides
    (posttrain and TRL both pass ``completion_ids``; TRL 0.11.4's script scores the same quantity)."""
    return [len(set(ids)) / max(1, len(ids)) for ids in completion_ids]


def prompt_rows(n: int, tokenizer, length: int | None = None) -> tuple[list[dict], int]:
    """``n`` prompts that all have one token length (so batches never differ in shape): toy arithmetic problems
    of their most common length, or, with ``length``, distinct windows of the shipped corpus of exactly that
    many tokens (checked by tokenizing them back, as both libraries do)."""
    if length is None:
        pool = toy.arithmetic_problems(n * 8, seed=SEED)
        lengths = [len(tokenize_prompt(tokenizer, r["prompt"])) for r in pool]
        length = collections.Counter(lengths).most_common(1)[0][0]
        rows = [r for r, k in zip(pool, lengths) if k == length][:n]
    else:
        from importlib import resources

        text = resources.files("posttrain").joinpath("assets/corpus.txt").read_text(encoding="utf-8")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rows, seen, start = [], set(), 0
        while len(rows) < n and start + length <= len(ids):
            prompt = tokenizer.decode(ids[start: start + length])
            start += 97  # overlapping windows, each one distinct
            if len(tokenize_prompt(tokenizer, prompt)) == length and prompt not in seen:
                seen.add(prompt)
                rows.append({"prompt": prompt})
    if len(rows) < n:
        raise RuntimeError(f"only {len(rows)} prompts of {length} tokens; need {n}")
    return rows, length


@dataclass
class Run:
    seconds: dict  # step -> seconds (timed steps only)
    completions: dict  # step -> completions generated
    tokens: dict  # step -> completion tokens generated
    phases: dict | None = None  # phase -> mean seconds per step (warm-up included), where timed

    @property
    def throughput(self) -> float:
        return sum(self.completions.values()) / sum(self.seconds.values())


def _timed(stamps: dict, counts: dict, tokens: dict, warmup: int, total: int, what: str) -> Run:
    timed = range(warmup + 1, total + 1)
    missing = [k for k in [warmup, *timed] if k not in stamps] + [k for k in timed if k not in counts]
    if missing:
        raise RuntimeError(f"{what}: no clock/count for steps {missing}")
    return Run({k: stamps[k] - stamps[k - 1] for k in timed}, {k: counts[k] for k in timed},
               {k: tokens[k] for k in timed})


def _record(counts: dict, tokens: dict, k: int, what: str, got: tuple, per_step: int) -> None:
    """Count step k's work, checking it is the same on both sides: ``got`` = (completions, completion tokens,
    prompt tokens) must be ``per_step`` prompts of S["prompt_tokens"] tokens, completions of max_new_tokens."""
    want = (per_step, per_step * S["max_new_tokens"], per_step * S["prompt_tokens"])
    if tuple(got) != want:
        raise RuntimeError(f"{what} step {k}: (completions, completion tokens, prompt tokens) = {got}; want {want}")
    counts[k], tokens[k] = got[0], got[1]


def run_posttrain(family: str, model_dir: str, rows: list[dict], steps: int, warmup: int) -> Run:
    """One run; a "step" here is one generation (sample, score, update), timed from the end of the previous
    generation's last optimizer step to the end of its own (PPO: 8 optimizer steps per generation)."""
    total, length = warmup + steps, S["max_new_tokens"]
    common = dict(seed=SEED, max_completion_length=length, temperature=1.0, top_k=0, top_p=1.0,
                  lr_scheduler_type="constant", weight_decay=0.0, logging_steps=10**9, save_strategy="no",
                  report_to="none", disable_tqdm=True, bf16=False, generation_kwargs={"min_new_tokens": length})
    clock, counts, tokens = bench.StepClock(), {}, {}
    with tempfile.TemporaryDirectory() as tmp, bench._quiet():
        model = load_model(model_dir, dtype=torch.float32, seed=SEED)
        if family == "ppo":
            per_step, micro = S["ppo_batch"], S["ppo_mini_batch"]
            args = PPOConfig(output_dir=tmp, per_device_train_batch_size=micro, steps_per_generation=per_step // micro,
                             num_iterations=S["ppo_epochs"], learning_rate=S["ppo_lr"], max_grad_norm=None,
                             init_kl_coef=S["ppo_kl_coef"], target_kl=None, kl_estimator="k1", gamma=1.0, lam=0.95,
                             cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, whiten_advantages=True,
                             reference="copy", max_steps=total * S["ppo_epochs"] * per_step // micro, **common)
            cls = PPOTrainer
        else:
            (cls, cfg), per_step = (GRPOTrainer, GRPOConfig) if family == "grpo" else (RLOOTrainer, RLOOConfig), \
                S["prompts"] * S["generations"]
            extra = dict(loss_type="dapo", scale_rewards="group") if family == "grpo" else dict(normalize_advantages=False)
            args = cfg(output_dir=tmp, per_device_train_batch_size=per_step, num_generations=S["generations"],
                       num_iterations=1, learning_rate=S["group_lr"], max_grad_norm=1.0, max_steps=total,
                       beta=S["rloo_beta"] if family == "rloo" else 0.0, epsilon=0.2, reference="auto",
                       **extra, **common)
        trainer = cls(model, reward_funcs=distinct_reward, args=args, train_dataset=rows,
                      processing_class=load_tokenizer(TOKENIZER), callbacks=[clock])
        sample, per_generation = trainer.sample, args.optimizer_steps_per_generation()

        def counted_sample(*a, **kw):
            rollout = sample(*a, **kw)
            _record(counts, tokens, trainer.generations, f"posttrain {family}",
                    (len(rollout), int(rollout.completion_mask.sum()), int(rollout.prompt_attention.sum())), per_step)
            return rollout

        trainer.sample = counted_sample
        phases = Phases()
        phases.wrap(trainer, "sample", "generation")
        phases.wrap(trainer, "score", "rewards")
        if trainer.reference is not None:
            phases.wrap(trainer.reference, "completion_logps", "reference / old-policy log-probs")
        module = sys.modules[type(trainer).__module__]
        forward = "forward_completion" if family == "ppo" else "completion_logps"
        phases.wrap(module, forward, "policy forwards")
        clock.times[0] = time.perf_counter()
        try:
            trainer.train()
        finally:
            setattr(module, forward, getattr(module, forward).__wrapped__)
    stamps = {k // per_generation: t for k, t in clock.times.items() if k % per_generation == 0}
    run = _timed(stamps, counts, tokens, warmup, total, f"posttrain {family}")
    run.phases = phases.per_step(clock.times[max(clock.times)] - clock.times[0], total)
    return run


def run_trl(family: str, model_dir: str, rows: list[dict], steps: int, warmup: int) -> Run:
    import trl

    total, length, per_step = warmup + steps, S["max_new_tokens"], S["prompts"] * S["generations"]
    clock, counts, tokens = bench.StepClock(), {}, {}
    with tempfile.TemporaryDirectory() as tmp, bench._quiet():
        common = dict(
            output_dir=tmp, max_steps=total, per_device_train_batch_size=per_step, gradient_accumulation_steps=1,
            num_generations=S["generations"], max_completion_length=length, num_iterations=1,
            generation_kwargs={"min_new_tokens": length}, temperature=1.0, top_k=0, top_p=1.0, epsilon=0.2,
            learning_rate=S["group_lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            optim="adamw_torch", max_grad_norm=1.0, seed=SEED, data_seed=SEED, bf16=False, fp16=False,
            gradient_checkpointing=False, logging_strategy="no", save_strategy="no", eval_strategy="no",
            report_to="none", disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False,
            use_cpu=not torch.cuda.is_available(), disable_dropout=True, log_completions=False)
        if family == "grpo":
            args, cls = trl.GRPOConfig(**common, beta=0.0, loss_type="dapo", scale_rewards="group"), trl.GRPOTrainer
        else:
            args, cls = trl.RLOOConfig(**common, beta=S["rloo_beta"], normalize_advantages=False), trl.RLOOTrainer
        # A model loaded from model_dir: TRL builds its reference (RLOO, beta > 0) from config.name_or_path.
        model = load_model(model_dir, dtype=torch.float32, seed=SEED)
        trainer = cls(model, reward_funcs=distinct_reward, args=args, train_dataset=datasets.Dataset.from_list(rows),
                      processing_class=load_tokenizer(TOKENIZER), callbacks=[clock])
        generate = trainer._generate_and_score_completions

        def counted(*a, **kw):
            out = generate(*a, **kw)
            mask = out["completion_mask"]
            _record(counts, tokens, trainer.state.global_step + 1, f"TRL {family}",
                    (mask.shape[0], int(mask.sum()), int(out["prompt_mask"].sum())), per_step)
            return out

        trainer._generate_and_score_completions = counted
        phases = Phases()
        phases.wrap(trainer, "_generate", "generation")
        phases.wrap(trainer, "_calculate_rewards", "rewards")
        logps = trainer._get_per_token_logps_and_entropies

        def per_token_logps(*a, **kw):  # sampling-time / reference passes vs the policy's own forwards
            inside = getattr(trainer, "_scoring", False)
            with phases.timing("reference / old-policy log-probs" if inside else "policy forwards"):
                return logps(*a, **kw)

        def scoring(*a, **kw):
            trainer._scoring = True
            try:
                return counted(*a, **kw)
            finally:
                trainer._scoring = False

        trainer._get_per_token_logps_and_entropies, trainer._generate_and_score_completions = per_token_logps, scoring
        clock.times[0] = time.perf_counter()
        trainer.train()
    run = _timed(clock.times, counts, tokens, warmup, total, f"TRL {family}")
    run.phases = phases.per_step(clock.times[max(clock.times)] - clock.times[0], total)
    return run


def run_trl011_ppo(model_dir: str, rows: list[dict], steps: int, warmup: int, python: str) -> Run:
    """TRL 0.11.4's value-head PPO in its own venv (benchmarks/ppo_trl011.py), the same settings as ours."""
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "prompts.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows)
        flags = dict(model_dir=model_dir, prompts=os.path.join(tmp, "prompts.jsonl"), batch_size=S["ppo_batch"],
                     mini_batch_size=S["ppo_mini_batch"], ppo_epochs=S["ppo_epochs"],
                     max_new_tokens=S["max_new_tokens"], steps=steps, warmup=warmup, seed=SEED,
                     output=os.path.join(tmp, "result.json"))
        cmd = [python, os.path.join(HERE, "ppo_trl011.py"), *(x for k, v in flags.items() for x in (f"--{k}", str(v)))]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"TRL 0.11.4 PPO failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
        with open(os.path.join(tmp, "result.json"), encoding="utf-8") as f:
            result = json.load(f)
    want = dict(learning_rate=S["ppo_lr"], init_kl_coef=S["ppo_kl_coef"], adap_kl_ctrl=False, kl_penalty="kl",
                batch_size=S["ppo_batch"], mini_batch_size=S["ppo_mini_batch"], ppo_epochs=S["ppo_epochs"],
                max_grad_norm=None, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95)
    differ = {k: (v, result["config"].get(k)) for k, v in want.items() if result["config"].get(k) != v}
    if differ:
        raise RuntimeError(f"TRL 0.11.4 PPO settings differ from ours (ours, theirs): {differ}")
    timed, n = range(warmup + 1, warmup + steps + 1), result["episodes_per_step"]
    return Run(dict(zip(timed, result["step_seconds"])), dict.fromkeys(timed, n),
               dict.fromkeys(timed, n * S["max_new_tokens"]))  # its script asserts every response's length


def fastest(runs: list[Run]) -> float:
    """Timed completions over the sum, across steps, of each step's fastest round."""
    steps = runs[0].completions
    return sum(steps.values()) / sum(min(r.seconds[k] for r in runs) for k in steps)


def benchmark(families, steps: int, warmup: int, repeats: int, log=print) -> dict:
    tokenizer = load_tokenizer(TOKENIZER)
    need = max(64, max(S["prompts"], S["ppo_batch"]) * (steps + warmup))
    prompt_sets = {length: prompt_rows(need, tokenizer, length) for length in {S["group_prompt_tokens"], S["ppo_prompt_tokens"]}}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        load_model(MODEL, dtype=torch.float32, seed=SEED).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        trl_python = None
        if "ppo" in families:
            try:
                import trl011_env

                trl_python = trl011_env.ensure_env()
                trl011_dir = trl011_env.prepare_model_dir(model_dir, os.path.join(tmp, "model-trl011"))
            except Exception as err:  # no venv (offline, no pip): posttrain's side still runs
                log(f"  TRL 0.11.4 venv unavailable, PPO TRL side skipped: {err}")
        for family in families:
            rows, S["prompt_tokens"] = prompt_sets[S["ppo_prompt_tokens" if family == "ppo" else "group_prompt_tokens"]]
            S[f"{family}_prompt_tokens_used"] = S["prompt_tokens"]  # every prompt's length, checked per step
            runs = {"posttrain": [], "trl": []}
            for r in range(repeats):
                order = ("posttrain", "trl") if r % 2 == 0 else ("trl", "posttrain")
                for library in order:
                    if library == "trl" and family == "ppo" and trl_python is None:
                        continue
                    run = (run_posttrain(family, model_dir, rows, steps, warmup) if library == "posttrain" else
                           run_trl011_ppo(trl011_dir, rows, steps, warmup, trl_python) if family == "ppo" else
                           run_trl(family, model_dir, rows, steps, warmup))
                    runs[library].append(run)
                    log(f"  {family:<4} round {r + 1} {library:<9} {run.throughput:9.2f} completions/s "
                        f"({sum(run.completions.values())} completions, {sum(run.tokens.values())} tokens in "
                        f"{sum(run.seconds.values()):.2f} s)")
            results[family] = runs
    return results


def table(results: dict, families) -> str:
    lines = ["| benchmark | posttrain | TRL | ratio |", "|---|---:|---:|---:|"]
    for family in families:
        runs = results[family]
        a, b = fastest(runs["posttrain"]), fastest(runs["trl"]) if runs["trl"] else float("nan")
        lines.append(f"| {LABELS[family]} | {a:,.2f} | {'-' if b != b else f'{b:,.2f}'} | "
                     f"{'-' if b != b else f'{a / b:.2f}x'} |")
    return "\n".join(lines)


def details(results: dict, families) -> str:
    lines = ["| benchmark | library | round | completions | completion tokens | seconds | completions/s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for family in families:
        for library, runs in results[family].items():
            for i, run in enumerate(runs, 1):
                lines.append(f"| {family} | {library} | {i} | {sum(run.completions.values())} | "
                             f"{sum(run.tokens.values())} | {sum(run.seconds.values()):.2f} | {run.throughput:.2f} |")
    return "\n".join(lines)


def markdown(results: dict, families, command: str, steps: int, warmup: int, repeats: int, elapsed: float) -> str:
    info, (L, P, G) = bench.machine(), (S["max_new_tokens"], S["prompts"], S["generations"])
    ppo_opt = S["ppo_epochs"] * S["ppo_batch"] // S["ppo_mini_batch"]
    return f"""## Online RL: GRPO, RLOO and PPO

Completions per second of posttrain's online trainers against TRL's, measured by
[`benchmarks/online.py`](benchmarks/online.py) (ratio = posttrain / TRL; above 1 means posttrain is faster).
GRPO and RLOO run against TRL {info['trl']} in the same process; PPO against TRL 0.11.4, the last release
with value-head PPO, in its own venv (`benchmarks/trl011_env.py`, `benchmarks/ppo_trl011.py`).
Command (took {elapsed / 60:.1f} min; torch threads {torch.get_num_threads()}):

```
{command}
```

{table(results, families)}

- **Model and data.** `{MODEL}` (seed {SEED}) saved once, fp32; every run loads a fresh copy. Prompts:
  `toy.arithmetic_problems` of one length ({S['prompt_tokens']} tokens), so all batches have the same
  shape on both sides. Reward: the fraction of distinct token ids in the completion, on both sides.
- **Equal lengths.** Every completion is exactly {L} tokens: posttrain and TRL {info['trl']} get
  `generation_kwargs={{"min_new_tokens": {L}}}` (TRL's setting, in both configs), TRL 0.11.4 `generation_kwargs={{"min_new_tokens": {L}}}`, TRL 0.11.4 `min_new_tokens={L}` in `generate`, so
  transformers masks the eos logit throughout. Checked every step from each library's own batch
  (completions, completion tokens, prompt tokens; TRL 0.11.4's script asserts each response's length).
- **GRPO / RLOO.** {P} prompts x G={G} = {P * G} completions per step (the same config on both sides:
  `per_device_train_batch_size={P * G}` completions, `num_iterations=1`, one optimizer step per generation),
  temperature 1, `top_k` 0, `top_p` 1, AdamW lr {S['group_lr']:g} constant, clipping 1.0, epsilon 0.2, dropout
  off. GRPO: beta 0, no reference on either side, `loss_type="dapo"`, group-std scaling. RLOO: beta
  {S['rloo_beta']}, k1 KL summed into the reward, frozen-copy reference on both sides, no advantage
  normalisation, the sequence-level loss on both sides.
- **PPO.** {S['ppo_batch']} episodes per step (posttrain: `per_device_train_batch_size={S['ppo_mini_batch']}`,
  `steps_per_generation={S['ppo_batch'] // S['ppo_mini_batch']}`), mini-batch {S['ppo_mini_batch']}, {S['ppo_epochs']} epochs
  ({ppo_opt} optimizer steps per step), lr {S['ppo_lr']:g}, fixed KL coefficient {S['ppo_kl_coef']} (k1), gamma 1,
  lambda 0.95, clip 0.2, value clip 0.2, vf_coef 0.1, whitened advantages, no gradient clipping (TRL
  0.11.4's default), frozen-copy reference. TRL 0.11.4's value head keeps its 0.1 dropout.
- **Where the work differs.** With one optimizer step per batch neither library's GRPO runs a
  sampling-time log-prob pass (the ratio is 1). RLOO's KL penalty needs the sampling policy's log-probs
  and PPO needs them and the values: TRL runs a forward for them, posttrain takes them from the
  generation step (exact in float32, `generation_backend="posttrain"`). posttrain prefills each prompt
  once per group and computes it once per group in the training forwards (`prefix_sharing`, default on
  for GRPO/RLOO); with 5-token prompts there is little to save.
- **Timing.** {warmup} warm-up + {steps} timed steps, {repeats} round(s) per library, alternating which goes
  first. posttrain and TRL {info['trl']}: a step (one generation) runs from the end of the previous one to
  its own last optimizer step
  (sampling, reward, update); TRL 0.11.4 (its script): from tokenizing the step's prompts to the return of
  `step()`. Throughput = timed completions / sum over steps of the step's fastest round.

- **Not benchmarked against TRL: ReST and TextEnvironment rollouts.** TRL has no ReST trainer, and
  TRL 1.16 has no TextEnvironment (0.11.4's was a separate, text-in/text-out API). ReST's Grow step is
  the rollout path timed in the rows above (sampling + scoring); its Improve step is NLL on token ids
  through the same mini-batch loop. Tool rollouts re-run generation once per turn without reusing the
  KV cache across turns (a known cost, noted in the code's docs).

Per run:

{details(results, families)}

Seconds per step by phase (the mean over a run's steps, warm-up included, of its first round):

{phases_table(results, families)}
"""


def phases_table(results: dict, families) -> str:
    names = ["generation", "rewards", "reference / old-policy log-probs", "policy forwards",
             "backward, optimizer, rest"]
    lines = ["| benchmark | library | " + " | ".join(names) + " | step |", "|---|---|" + "---:|" * (len(names) + 1)]
    for family in families:
        for library, runs in results[family].items():
            if not runs or not runs[0].phases:
                continue
            phases = runs[0].phases
            cells = [f"{phases[n]:.2f}" if n in phases else "-" for n in names]
            lines.append(f"| {family} | {library} | " + " | ".join(cells) + f" | {sum(phases.values()):.2f} |")
    return "\n".join(lines)


def markdown_long(results: dict, families, command: str, steps: int, warmup: int, repeats: int,
                  elapsed: float) -> str:
    info, (L, P, G) = bench.machine(), (S["max_new_tokens"], S["prompts"], S["generations"])
    return f"""## Online RL at the shape of real work: long prompts, G = {G}

The same comparison as above with prompts of {S['group_prompt_tokens']} tokens (PPO: {S['ppo_prompt_tokens']}),
{L}-token completions, G = {G}, on `{MODEL}` ({info.get('torch', torch.__version__)}, fp32, CPU).
Command (took {elapsed / 60:.1f} min; torch threads {torch.get_num_threads()}):

```
{command}
```

{table(results, families)}

- **Data.** Distinct windows of the shipped corpus (`posttrain/assets/corpus.txt`) of exactly
  {S['group_prompt_tokens']} tokens (PPO {S['ppo_prompt_tokens']}), checked per step on both sides (completions,
  completion tokens, prompt tokens). Every completion is exactly {L} tokens (`min_new_tokens`, both sides).
- **GRPO / RLOO.** {P} prompts x G={G} = {P * G} completions per step, one optimizer step per generation; every
  other setting as in the short-prompt rows (GRPO beta 0, no reference; RLOO beta {S['rloo_beta']}, frozen-copy
  reference). posttrain runs its defaults: `generation_backend="posttrain"` (each prompt prefilled once, its KV
  cache copied to the G rows; RLOO's sampling-time log-probs from the generation step) and `prefix_sharing`
  (each prompt computed once per group in the policy and reference forwards). TRL prefills and computes every
  prompt G times.
- **PPO.** {S['ppo_batch']} episodes per step, mini-batch {S['ppo_mini_batch']}, {S['ppo_epochs']} epochs, as in the
  short-prompt row. PPO samples one completion per prompt: nothing to share. posttrain takes the log-probs
  and values from the generation step; the rest of the work is the same on both sides.
- **Timing.** {warmup} warm-up + {steps} timed steps, {repeats} round(s) per library, alternating who goes first.

Seconds per step by phase (mean over the first round's steps, warm-up included; "backward, optimizer,
rest" is the step's time outside the named phases; TRL 0.11.4's PPO runs in its own venv and is not
broken down):

{phases_table(results, families)}

Per run:

{details(results, families)}
"""


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help=f"Timed steps per run (default {DEFAULT_STEPS}).")
    parser.add_argument("--warmup", type=int, default=None, help=f"Untimed steps first (default {DEFAULT_WARMUP}).")
    parser.add_argument("--repeats", type=int, default=None, help="Rounds per library, alternating who goes first.")
    parser.add_argument("--only", default=",".join(FAMILIES), help="Comma-separated subset of grpo,rloo,ppo.")
    parser.add_argument("--output", default=None, help="Write the markdown section here (benchmarks/online.md).")
    parser.add_argument("--quick", action="store_true", help="Smoke run: 1 warm-up + 2 timed steps, 1 round.")
    parser.add_argument("--setting", choices=("short", "long"), default="short",
                        help="short: tiny:llama-5m, 5-token prompts, 32-token completions, G=4 (the original rows); "
                             "long: tiny:llama-50m, 256-token prompts (PPO 128), 64-token completions, G=8.")
    args = parser.parse_args(argv)
    global MODEL
    defaults = QUICK if args.quick else dict(steps=DEFAULT_STEPS, warmup=DEFAULT_WARMUP, repeats=2)
    if args.setting == "long":
        MODEL = LONG["model"]
        S.update({k: v for k, v in LONG.items() if k in S})
        if not args.quick:
            defaults = dict(steps=LONG["steps"], warmup=LONG["warmup"], repeats=2)
    steps, warmup, repeats = (defaults[k] if getattr(args, k) is None else getattr(args, k) for k in defaults)
    families = [f.strip() for f in args.only.split(",") if f.strip()]
    if any(f not in FAMILIES for f in families) or not families:
        parser.error(f"--only takes a subset of {','.join(FAMILIES)}")
    if min(steps, warmup, repeats) < 1:
        parser.error("--steps, --warmup and --repeats must be >= 1")
    start = time.perf_counter()
    print(f"online RL: {families}, {warmup} warm-up + {steps} timed steps, {repeats} round(s)", flush=True)
    results = benchmark(families, steps, warmup, repeats, log=lambda line: print(line, flush=True))
    elapsed = time.perf_counter() - start
    print("\n" + table(results, families) + f"\n\n(ratio = posttrain / TRL; {elapsed:.0f} s)")
    if args.output:
        shown = argv if argv is not None else sys.argv[1:]
        command = " ".join(["python benchmarks/online.py", *(shlex.quote(a) for a in shown)])
        with open(args.output, "w", encoding="utf-8") as f:
            write = markdown_long if args.setting == "long" else markdown
            f.write(write(results, families, command, steps, warmup, repeats, elapsed))
        print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
