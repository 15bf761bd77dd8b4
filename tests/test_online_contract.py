"""The online trainers (GRPO, RLOO, PPO) keep the transformers.Trainer / TRL contract: ``report_to``
integrations see what ``state.log_history`` holds, ``TrainerCallback`` events, evaluation during
training, ``push_to_hub`` failing fast offline, TRL-style reward functions and their keywords, prompt
truncation, and the KL statistics. Each test is small (tiny:llama, a few short steps)."""

import logging
import math
import time

import pytest
import torch
from transformers import TrainerCallback

from posttrain import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer, RLOOConfig, RLOOTrainer
from posttrain.data import toy
from posttrain.rollout import HFGenerate, PolicySampler

ONLINE = {"grpo": (GRPOTrainer, GRPOConfig), "rloo": (RLOOTrainer, RLOOConfig), "ppo": (PPOTrainer, PPOConfig)}


def config(cls, tmp_path, prompts: int = 2, **kw):
    """``prompts`` prompts per generation (x num_generations for GRPO/RLOO), one optimizer step each."""
    group = kw.get("num_generations", 2) if cls is not PPOConfig else 1
    base = dict(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=prompts * group,
                max_completion_length=4, learning_rate=1e-3, logging_steps=1, save_strategy="no",
                lr_scheduler_type="constant", seed=0, report_to="none", disable_tqdm=True)
    if cls is not PPOConfig:
        base["num_generations"] = 2
    else:
        base["num_iterations"] = 1
    return cls(**{**base, **kw})


def varied(completions, **kwargs):
    """A deterministic reward that differs between completions (so advantages are not all 0)."""
    return [float(sum(map(ord, str(c))) % 7) for c in completions]


def rows(n=8):
    return toy.arithmetic_problems(n, seed=0)


def params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


class EosSometimes(HFGenerate):
    """transformers' generate, then an eos as the 3rd token of every 3rd row (a completion that ends early,
    whose text must not show the special token)."""

    def generate(self, model, prompt_ids, prompt_attention, sampling, tokenizer):
        out = super().generate(model, prompt_ids, prompt_attention, sampling, tokenizer)
        out[::3, 2] = tokenizer.eos_token_id
        return out


class Capture(PolicySampler):
    """The default sampler (or ``backend``), keeping every rollout it returns."""

    def __init__(self, trainer_args, tokenizer, backend=None):
        super().__init__(tokenizer, trainer_args.sampling(), backend=backend)
        self.rollouts = []

    def __call__(self, *args, **kwargs):
        rollout = super().__call__(*args, **kwargs)
        self.rollouts.append(rollout)
        return rollout


# ---- a. report_to="tensorboard": the event files hold what state.log_history holds ----------------------
def tensorboard_scalars(output_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted({p.parent for p in output_dir.rglob("events.out.tfevents.*")})
    assert len(runs) == 1, f"expected one TensorBoard run under {output_dir}, found {runs}"
    events = EventAccumulator(str(runs[0]), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_tensorboard_matches_log_history(output_dir, history):
    scalars = tensorboard_scalars(output_dir)
    expected = {}
    for entry in history:
        for key, value in entry.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                tag = "eval/" + key[len("eval_"):] if key.startswith("eval_") else "train/" + key
                expected.setdefault(tag, []).append((entry["step"], float(value)))
    assert expected, "nothing was logged"
    assert set(expected) <= set(scalars), sorted(set(expected) - set(scalars))
    for tag, points in expected.items():
        got = scalars[tag]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        for (_, a), (_, b) in zip(got, points):
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6, abs=1e-6), (tag, a, b)


@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_tensorboard_scalars_equal_log_history_online(tmp_path, monkeypatch, method):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    trainer_cls, config_cls = ONLINE[method]
    args = config(config_cls, tmp_path, report_to="tensorboard", beta=0.1) if method == "grpo" else \
        config(config_cls, tmp_path, report_to="tensorboard")
    trainer = trainer_cls("tiny:llama", varied, args=args, train_dataset=rows())
    trainer.train()
    history = trainer.state.log_history
    assert [e["step"] for e in history] == [1, 2] and all("reward" in e for e in history)
    assert_tensorboard_matches_log_history(tmp_path / "out", history)


def test_tensorboard_scalars_equal_log_history_sft(tmp_path, monkeypatch):
    from posttrain import SFTConfig, SFTTrainer

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4, logging_steps=1,
                     save_strategy="no", report_to="tensorboard", disable_tqdm=True, seed=0, learning_rate=1e-3,
                     max_length=32)
    trainer = SFTTrainer("tiny:llama", args, train_dataset=toy.prompt_completion(16, seed=0))
    trainer.train()
    history = trainer.state.log_history
    assert sum("loss" in e for e in history) == 3
    assert_tensorboard_matches_log_history(tmp_path / "out", history)


# ---- b. TrainerCallback events ---------------------------------------------------------------------------
class Recorder(TrainerCallback):
    def __init__(self, stop_at=None):
        self.events, self.stop_at = [], stop_at

    def on_train_begin(self, args, state, control, **kwargs):
        self.events.append(("train_begin", state.global_step))

    def on_step_begin(self, args, state, control, **kwargs):
        self.events.append(("step_begin", state.global_step))

    def on_step_end(self, args, state, control, **kwargs):
        self.events.append(("step_end", state.global_step))
        if self.stop_at is not None and state.global_step >= self.stop_at:
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.events.append(("log", state.global_step, dict(logs)))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.events.append(("evaluate", state.global_step, dict(metrics)))

    def on_train_end(self, args, state, control, **kwargs):
        self.events.append(("train_end", state.global_step))

    def named(self, name):
        return [e for e in self.events if e[0] == name]


@pytest.mark.parametrize("method", ["grpo", "rloo", "ppo"])
def test_callbacks_see_the_training_events(tmp_path, method):
    trainer_cls, config_cls = ONLINE[method]
    recorder = Recorder()
    args = config(config_cls, tmp_path, max_steps=4, logging_steps=2)
    trainer = trainer_cls("tiny:llama", varied, args=args, train_dataset=rows(), callbacks=[recorder])
    trainer.train()
    assert recorder.events[0] == ("train_begin", 0) and recorder.events[-1] == ("train_end", 4)
    assert [e[1] for e in recorder.named("step_end")] == [1, 2, 3, 4]
    assert [e[1] for e in recorder.named("step_begin")] == [0, 1, 2, 3]
    logs = recorder.named("log")
    assert [e[1] for e in logs] == [2, 4]  # one per logging step
    history = trainer.state.log_history
    assert [e["step"] for e in history] == [2, 4]
    assert [{k: v for k, v in e.items() if k != "step"} for e in history] == [e[2] for e in logs]
    assert all("reward" in e and "learning_rate" in e for e in history)


def test_a_callback_can_stop_training(tmp_path):
    """``control.should_training_stop`` in on_step_end ends the run after that step (Trainer behaviour),
    also in the middle of a generation."""
    recorder = Recorder(stop_at=1)
    args = config(GRPOConfig, tmp_path, max_steps=4, num_iterations=2)  # 2 optimizer steps per generation
    trainer = GRPOTrainer("tiny:llama", varied, args=args, train_dataset=rows(), callbacks=[recorder])
    trainer.train()
    assert trainer.state.global_step == 1 and [e[1] for e in recorder.named("step_end")] == [1]


# ---- c. evaluation during training -----------------------------------------------------------------------
@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_eval_dataset_is_evaluated_every_eval_steps(tmp_path, method):
    trainer_cls, config_cls = ONLINE[method]
    recorder = Recorder()
    args = config(config_cls, tmp_path, eval_strategy="steps", eval_steps=1, per_device_eval_batch_size=4)
    trainer = trainer_cls("tiny:llama", varied, args=args, train_dataset=rows(), eval_dataset=rows(12)[8:],
                          callbacks=[recorder])
    trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_reward" in e]
    assert [e["step"] for e in evals] == [1, 2]
    for entry in evals:
        assert {"eval_reward", "eval_length", "eval_varied"} <= set(entry)
        assert ({"eval_kl", "eval_kl_sum"} <= set(entry)) == (trainer.reference is not None)  # GRPO beta=0: none
        assert math.isfinite(entry["eval_reward"]) and 0 < entry["eval_length"] <= 4
        assert entry["eval_reward"] == pytest.approx(entry["eval_varied"])
        assert not any(k in entry for k in ("reward", "loss", "learning_rate"))  # eval entries are separate
    assert [e[1] for e in recorder.named("evaluate")] == [1, 2]
    assert sum("reward" in e for e in trainer.state.log_history) == 2  # the training entries are still there


# ---- d. push_to_hub offline ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_push_to_hub_offline_fails_at_construction(tmp_path, monkeypatch, method):
    import huggingface_hub.constants

    from posttrain.hub import HubUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    trainer_cls, config_cls = ONLINE[method]
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE"):
        trainer_cls("tiny:llama", varied, args=config(config_cls, tmp_path, push_to_hub=True, hub_model_id="me/x"),
                    train_dataset=rows())
    assert time.perf_counter() - start < 5
    trainer = trainer_cls("tiny:llama", varied, args=config(config_cls, tmp_path), train_dataset=rows())
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE"):
        trainer.push_to_hub()
    assert time.perf_counter() - start < 5


# ---- e. TRL-style reward functions get the right texts -----------------------------------------------------
@pytest.mark.parametrize("method", ["grpo", "rloo", "ppo"])
@pytest.mark.parametrize("conversational", [False, True], ids=["text", "chat"])
def test_reward_functions_get_the_sampled_completions_and_their_prompts(tmp_path, method, conversational):
    trainer_cls, config_cls = ONLINE[method]
    data = [{"prompt": ([{"role": "user", "content": r["prompt"]}] if conversational else r["prompt"]), "idx": i}
            for i, r in enumerate(rows())]
    calls = {"f": [], "g": []}

    def f(completions, **kwargs):
        calls["f"].append(dict(kwargs, completions=completions, rows=rows_taken[-1]))
        return [float(len(str(c)) % 5) for c in completions]

    def g(completions, prompts, **kwargs):
        calls["g"].append(dict(kwargs, completions=completions, prompts=prompts))
        return [1.0] * len(completions)

    args = config(config_cls, tmp_path)
    group = getattr(args, "num_generations", 1)
    trainer = trainer_cls("tiny:llama", [f, g], args=args, train_dataset=data)
    sampler = trainer.sampler = Capture(args, trainer.tokenizer, backend=EosSometimes())
    rows_taken, take = [], trainer.next_prompts  # the prompt rows of each generation, as the trainer takes them
    trainer.next_prompts = lambda: rows_taken.append(take()) or rows_taken[-1]
    trainer.train()
    assert len(calls["f"]) == len(calls["g"]) == len(sampler.rollouts) == 2
    tok = trainer.tokenizer
    for got_f, got_g, rollout in zip(calls["f"], calls["g"], sampler.rollouts):
        assert rollout.completion_attention[0].sum() == 3 and rollout.completion_ids[0, 2] == tok.eos_token_id
        sampled = tok.batch_decode(rollout.completion_lists(), skip_special_tokens=True)
        assert tok.eos_token not in sampled[0]
        assert got_f["completion_ids"] == got_g["completion_ids"] == rollout.completion_lists()
        assert tok.batch_decode(got_f["completion_ids"], skip_special_tokens=True) == sampled
        expected = [[{"role": "assistant", "content": t}] for t in sampled] if conversational else sampled
        assert got_f["completions"] == got_g["completions"] == expected
        picked = [i for i in got_f["rows"] for _ in range(group)]  # each prompt num_generations times in a row
        assert len(picked) == args.per_device_train_batch_size
        assert got_g["prompts"] == got_f["prompts"] == [data[i]["prompt"] for i in picked]
        assert got_f["idx"] == got_g["idx"] == picked  # the other columns, row for row
        assert got_f["trainer_state"] is trainer.state
    assert calls["f"][0]["rows"] != calls["f"][1]["rows"] and len(rows_taken) == 2


# ---- f. prompt truncation --------------------------------------------------------------------------------
def test_max_prompt_length_truncates_and_counts(tmp_path, caplog):
    long_rows = [{"prompt": f"Question number {i}: what is {i} plus {i}? Answer:"} for i in range(8)]
    full = None
    for limit in (3, None):
        caplog.clear()
        args = config(GRPOConfig, tmp_path, max_prompt_length=limit)
        with caplog.at_level(logging.WARNING, logger="posttrain"):
            trainer = GRPOTrainer("tiny:llama", varied, args=args, train_dataset=long_rows)
        sampler = trainer.sampler = Capture(args, trainer.tokenizer)
        trainer.train()
        truncated = [e["truncated_prompts"] for e in trainer.state.log_history if "truncated_prompts" in e]
        warned = [r for r in caplog.records if "max_prompt_length" in r.getMessage()]
        lengths = [len(ids) for ids in trainer.train_prompts.ids]
        if limit == 3:
            assert truncated and all(t > 0 for t in truncated)
            assert warned and warned[0].levelno == logging.WARNING
            assert all(trainer.train_prompts.truncated) and lengths == [3] * 8
            assert all(r.prompt_attention.sum(1).max() <= 3 for r in sampler.rollouts)
        else:
            assert truncated and all(t == 0 for t in truncated) and not warned
            assert not any(trainer.train_prompts.truncated) and min(lengths) > 3
            full = trainer.train_prompts.ids
    assert all(len(ids) > 3 for ids in full)


# ---- g. GRPO logs the KL whenever beta > 0 ----------------------------------------------------------------
def test_grpo_logs_kl_with_one_optimizer_step_per_generation(tmp_path):
    # bf16=False: a KL of exactly 0 is an fp32 identity (bf16 autocast, the default on a bf16 GPU, rounds the
    # policy's forward and not the sampler's or the reference's alike)
    args = config(GRPOConfig, tmp_path, beta=0.1, max_steps=3, generation_kwargs={"min_new_tokens": 4}, bf16=False)
    assert args.optimizer_steps_per_generation() == 1
    trainer = GRPOTrainer("tiny:llama", varied, args=args, train_dataset=rows())
    trainer.train()
    history = trainer.state.log_history
    assert len(history) == 3 and all("kl" in e and "kl_sum" in e for e in history)
    assert history[0]["kl"] == 0.0  # the policy is still the reference when the first generation is sampled
    assert history[-1]["kl"] > 0 and history[-1]["kl_sum"] == pytest.approx(4 * history[-1]["kl"], abs=1e-5)
    without = GRPOTrainer("tiny:llama", varied, args=config(GRPOConfig, tmp_path, beta=0.0), train_dataset=rows())
    without.train()
    assert trainer.reference is not None and without.reference is None
    assert not any("kl" in e for e in without.state.log_history)


# ---- h. use_bias_correction_kl matters off-policy; RLOO's kl is a per-token mean --------------------------
def test_grpo_bias_correction_changes_the_off_policy_update(tmp_path):
    finals = {}
    for name, correction in (("on", True), ("on_again", True), ("off", False)):
        args = config(GRPOConfig, tmp_path, beta=0.5, num_iterations=2, max_steps=4, learning_rate=1e-2,
                      use_bias_correction_kl=correction)
        assert args.optimizer_steps_per_generation() == 2  # the second step of each generation is off-policy
        trainer = GRPOTrainer("tiny:llama", varied, args=args, train_dataset=rows())
        trainer.train()
        finals[name] = params(trainer.model)
    assert torch.equal(finals["on"], finals["on_again"])  # deterministic: a difference is the setting's
    assert (finals["on"] - finals["off"]).abs().max() > 1e-6


def test_rloo_kl_is_a_per_token_mean(tmp_path):
    length = 5
    # bf16=False: a KL of exactly 0 is an fp32 identity (bf16 autocast, the default on a bf16 GPU, rounds the
    # policy's forward and not the reference's alike)
    args = config(RLOOConfig, tmp_path, beta=0.1, max_steps=3, max_completion_length=length,
                  generation_kwargs={"min_new_tokens": length}, bf16=False)
    trainer = RLOOTrainer("tiny:llama", varied, args=args, train_dataset=rows())
    trainer.train()
    history = trainer.state.log_history
    assert all(e["completion_length"] == length for e in history)
    assert history[0]["kl"] == 0.0 and history[-1]["kl"] != 0.0
    for entry in history:
        assert entry["kl_sum"] == pytest.approx(entry["kl"] * length, abs=1e-5)


def test_rest_calls_the_callbacks_once_per_phase(tmp_path):
    from posttrain import ReSTConfig, ReSTTrainer

    recorder = Recorder()
    args = ReSTConfig(output_dir=str(tmp_path / "rest"), grow_steps=1, improve_steps=2, num_generations=2,
                      max_completion_length=4, per_device_train_batch_size=8, save_strategy="no", seed=0,
                      report_to="none", disable_tqdm=True)
    trainer = ReSTTrainer("tiny:llama", varied, args=args, train_dataset=rows(), callbacks=[recorder])
    trainer.train()
    assert recorder.events[0] == ("train_begin", 0) and recorder.events[-1] == ("train_end", 3)
    assert [e[1] for e in recorder.named("step_end")] == [1, 2, 3]  # grow, improve 0, improve 1
    assert [e[2].get("improve") for e in recorder.named("log")] == [-1, 0, 1]


@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_gradient_checkpointing_gives_the_same_update(tmp_path, method):
    """gradient_checkpointing recomputes activations in the backward pass: the same weights come out."""
    trainer_cls, config_cls = ONLINE[method]
    after = []
    for checkpointing in (False, True):
        args = config(config_cls, tmp_path, max_steps=1, gradient_checkpointing=checkpointing)
        trainer = trainer_cls("tiny:llama", varied, args=args, train_dataset=rows())
        start = params(trainer.model)
        trainer.train()
        after.append(params(trainer.model))
        assert not torch.equal(after[-1], start)
    assert torch.allclose(after[0], after[1], atol=1e-6, rtol=0)
