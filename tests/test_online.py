"""Rollouts and the online trainers' mechanics: left padding, stop handling, log-probs, the PPO step API,
dropped rewards, accumulation, resume and the CLI. (Learning is in test_rl_learning.py; the Trainer
contract -- report_to, callbacks, evaluation, reward-function keywords -- is in test_online_contract.py.)"""

import json
import sys
from types import SimpleNamespace

import pytest
import torch

from posttrain import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer, RLOOConfig, RLOOTrainer, load_model
from posttrain import load_tokenizer as tokenizer_of
from posttrain.trainers.online import prefix_sharing_group
from posttrain.cli import main
from posttrain.data import toy
from posttrain.data.tokenize import tokenize_prompt
from posttrain.models.value_head import AutoModelForCausalLMWithValueHead
from posttrain.rollout import HFGenerate, PolicySampler, Rollout, SamplingConfig, forward_completion

from data_helpers import ACCELERATOR_RTOL, logged_runs_agree, runs_agree

PROMPTS = ["Honestly, the film", "I went to see the sequel last night and it", "Five"]


def quick(cls, prompts: int = 4, **kw):
    """A small config: ``prompts`` prompts per generation (x num_generations completions for GRPO/RLOO),
    one optimizer step per generation unless asked otherwise, and what the old defaults were (log every
    step, constant learning rate, seed 0, no checkpoints, no reporting)."""
    group = kw.get("num_generations", cls.num_generations) if hasattr(cls, "num_generations") else 1
    base = dict(output_dir=kw.pop("output_dir", "/tmp/posttrain-test-online"), max_steps=2,
                per_device_train_batch_size=prompts * group, max_completion_length=5, disable_tqdm=True,
                learning_rate=1e-3, logging_steps=1, save_strategy="no", lr_scheduler_type="constant", seed=0,
                report_to="none")
    if cls is PPOConfig:
        base["num_iterations"] = 1
    return cls(**{**base, **kw})


def params(model) -> torch.Tensor:
    """All the weights, flat, on the CPU (to compare with a fresh ``load_model`` or another run's)."""
    return torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()])


def varied(completions, **kw):
    """A deterministic reward that differs between completions (so advantages are not all 0)."""
    return [float(sum(map(ord, c)) % 7) for c in completions]


class EosEarly(HFGenerate):
    """transformers' generate, then an eos as the (i % 4 + 1)-th token of row i: lengths 1 to 4 (and the
    token means of micro-batches differ from the window's)."""

    def generate(self, model, prompt_ids, prompt_attention, sampling, tokenizer):
        out = super().generate(model, prompt_ids, prompt_attention, sampling, tokenizer)
        for i in range(out.shape[0]):
            out[i, i % 4] = tokenizer.eos_token_id
        return out


def logged(trainer, key):
    return [e[key] for e in trainer.state.log_history if key in e]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
def test_left_padded_rollout_logps_equal_each_row_alone(tokenizer, arch):
    model = load_model(f"tiny:{arch}", "seq2seq" if arch == "t5" else "causal-lm", seed=0).eval()
    sampler = PolicySampler(tokenizer, SamplingConfig(max_new_tokens=6, temperature=0.7))
    torch.manual_seed(0)
    rollout = sampler(model, [tokenize_prompt(tokenizer, p) for p in PROMPTS], PROMPTS)
    assert rollout.prompt_ids.shape[0] == 3 and (rollout.prompt_attention[:, -1] == 1).all()  # left padded
    for i, prompt in enumerate(PROMPTS):
        assert rollout.prompt_ids[i][rollout.prompt_attention[i].bool()].tolist() == tokenize_prompt(tokenizer, prompt)
        single = rollout.select([i])
        keep = single.completion_attention[0].bool()
        alone = Rollout(torch.tensor([tokenize_prompt(tokenizer, prompt)]), torch.ones(1, len(tokenize_prompt(tokenizer, prompt)), dtype=torch.long),
                        single.completion_ids[:, keep], torch.ones(1, int(keep.sum()), dtype=torch.long),
                        torch.ones(1, int(keep.sum()), dtype=torch.long))
        with torch.no_grad():
            logps, _ = forward_completion(model, alone, temperature=0.7)
        assert logps[0].tolist() == pytest.approx(rollout.logprobs[i][keep].tolist(), abs=1e-5)
        assert (rollout.logprobs[i][~keep] == 0).all()


def test_completions_stop_at_eos_and_stop_strings(tokenizer):
    eos = tokenizer.eos_token_id

    class Scripted:  # a backend that returns fixed tokens, so cutting is tested exactly
        def generate(self, model, prompt_ids, prompt_attention, sampling, tok):
            text = tok(" one. two. three", add_special_tokens=False)["input_ids"]
            return torch.tensor([text[:2] + [eos] + text[2:-1], text])

    model = load_model("tiny:llama", seed=0)
    sampler = PolicySampler(tokenizer, SamplingConfig(max_new_tokens=5, stop_strings=("two",)), backend=Scripted())
    full = len(tokenizer(" one. two. three", add_special_tokens=False)["input_ids"])
    assert full >= 5
    rollout = sampler(model, [[5, 6], [7]])
    lengths = rollout.completion_attention.sum(1).tolist()
    assert lengths[0] == 3 and rollout.completion_ids[0, 2] == eos  # eos kept, nothing after it
    assert tokenizer.decode(rollout.completion_lists()[1]).endswith("two") and lengths[1] < full
    assert not tokenizer.decode(rollout.completion_lists()[1][:-1]).endswith("two")


def test_stop_strings_reach_the_sampler_through_generation_kwargs():
    config = quick(GRPOConfig, num_generations=2, generation_kwargs={"min_new_tokens": 2, "stop_strings": ["two"]})
    assert config.sampling().stop_strings == ("two",) and config.sampling().min_new_tokens == 2
    as_json = quick(GRPOConfig, num_generations=2, generation_kwargs='{"stop_strings": ["x"]}')  # the CLI's form
    assert as_json.sampling().stop_strings == ("x",)
    with pytest.raises(ValueError, match="not supported"):
        quick(GRPOConfig, num_generations=2, generation_kwargs={"max_new_tokens": 3})


def test_sampling_settings_are_checked():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        quick(PPOConfig, top_p=0.0)


def test_ppo_step_api_updates_policy_and_value_head(tokenizer):
    # 3 episodes, micro-batches of 2 (ceil(3 / steps_per_generation)), 2 passes: 4 optimizer steps. Logging
    # every step must not take the statistics step() returns.
    trainer = PPOTrainer("tiny:llama", args=quick(PPOConfig, prompts=2, steps_per_generation=2, num_iterations=2))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    queries = [torch.tensor(tokenize_prompt(tokenizer, p)) for p in PROMPTS]
    responses = [torch.tensor([5, 6, 7]), torch.tensor([8]), torch.tensor([9, 10])]
    stats = trainer.step(queries, responses, [1.0, -1.0, 0.5])
    for key in ("policy_loss", "value_loss", "kl", "kl_coef", "clipfrac", "approx_kl", "loss", "returns"):
        assert key in stats and stats[key] == stats[key], key  # present and not NaN
    changed = {n.split(".")[0] for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"pretrained_model", "v_head"}
    assert trainer.state.global_step == 4  # 2 passes x 2 optimizer steps (was: stats["epochs"] == 2)
    assert stats["score"] == pytest.approx(0.5 / 3)
    with pytest.raises(ValueError, match="as many"):
        trainer.step(queries, responses[:2], [1.0, 2.0])
    with pytest.raises(ValueError, match="empty response"):
        trainer.step(queries[:1], [torch.tensor([], dtype=torch.long)], [1.0])


def test_seq2seq_ppo_trains(tmp_path):
    rows = toy.review_prompts(8, seed=0)
    # 2 generations of 4 prompts, 4 PPO epochs each: 8 optimizer steps, logged every 4
    config = quick(PPOConfig, output_dir=str(tmp_path), num_iterations=4, max_steps=8, logging_steps=4)
    trainer = PPOTrainer("tiny:t5", ["length:3"], args=config, train_dataset=rows)
    out = trainer.train()
    history = trainer.state.log_history
    assert out.global_step == 8 and [e["step"] for e in history] == [4, 8]
    assert all(e["value_loss"] == e["value_loss"] and "reward" in e for e in history)
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "value_head.safetensors").exists()


def test_dropped_samples_are_counted_and_get_no_weight():
    calls = []

    def some_none(prompts, completions, **kw):
        calls.append(len(completions))
        return [None if i % 4 == 0 else float(len(c)) for i, c in enumerate(completions)]

    rows = toy.arithmetic_problems(16, seed=0)
    trainer = GRPOTrainer("tiny:llama", some_none, args=quick(GRPOConfig, num_generations=4), train_dataset=rows)
    start = params(trainer.model)
    trainer.train()
    history = trainer.state.log_history
    assert history[0]["dropped"] == 4  # 16 completions, every 4th None
    assert calls == [16, 16]
    after = params(trainer.model)
    assert torch.isfinite(after).all() and not torch.equal(after, start)  # the others still train, no NaN leaks

    # weightless: a generation whose samples are all dropped adds no loss, not even the KL term (the policy
    # has moved away from the reference by then), so its gradient is exactly 0
    def none_second(prompts, completions, **kw):
        calls.append(len(completions))
        return [None] * len(completions) if len(calls) == 2 else varied(completions)

    for cls, config in ((GRPOTrainer, quick(GRPOConfig, num_generations=4, beta=0.5)),
                        (RLOOTrainer, quick(RLOOConfig, num_generations=4, beta=0.5))):
        calls.clear()
        trainer = cls("tiny:llama", none_second, args=config, train_dataset=rows)
        trainer.train()
        first, second = trainer.state.log_history
        assert (first["dropped"], second["dropped"]) == (0, 16), cls.__name__
        assert first["grad_norm"] > 0 and second["grad_norm"] == 0.0, cls.__name__
    trainer = PPOTrainer("tiny:llama", some_none, args=quick(PPOConfig), train_dataset=rows)
    trainer.train()
    assert trainer.state.log_history[0]["dropped"] == 1
    # PPO learns from the scored samples only: a generation with none makes no update (and does not crash);
    # its optimizer steps still count, so a run of such generations ends
    calls.clear()

    def none_first(prompts, completions, **kw):
        calls.append(len(completions))
        return [None] * len(completions) if len(calls) == 1 else [1.0] * len(completions)

    trainer = PPOTrainer("tiny:llama", none_first, args=quick(PPOConfig, max_steps=2), train_dataset=rows)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert calls == [4, 4] and trainer.state.global_step == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))  # the second one learns
    assert logged(trainer, "dropped") == [4.0, 0.0]  # one generation per logging step


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
@pytest.mark.parametrize("steps", [1, 2])
def test_gradient_accumulation_equals_one_big_batch(tmp_path, tokenizer, loss_type, steps):
    """8 completions per generation (2 prompts x 4), used in ``steps`` optimizer steps: one micro-batch per
    step, or micro-batches of 2 accumulated; the same samples, the same update."""
    rows = toy.arithmetic_problems(16, seed=0)
    weights = []
    per_step = 8 // steps
    for micro, accumulation in ((per_step, 1), (2, per_step // 2)):
        torch.manual_seed(0)
        config = quick(GRPOConfig, prompts=1, num_generations=4, per_device_train_batch_size=micro,
                       gradient_accumulation_steps=accumulation, steps_per_generation=8 // micro, max_steps=steps,
                       output_dir=str(tmp_path), learning_rate=1e-2, adam_epsilon=1.0, loss_type=loss_type,
                       max_grad_norm=0.0, bf16=False,  # an fp32 identity: bf16 autocast rounds micro-batches apart
                       prefix_sharing=False)  # micro-batches of 2 cannot share; sharing shuffles whole groups
        assert config.completions_per_process() == 8 and config.optimizer_steps_per_generation() == steps
        sampler = PolicySampler(tokenizer, config.sampling(), backend=EosEarly())  # completions of unequal length
        trainer = GRPOTrainer("tiny:llama", varied, args=config, train_dataset=rows, rollout_source=sampler)
        trainer.train()
        assert trainer.state.global_step == steps
        weights.append(params(trainer.model))
        device = next(trainer.model.parameters()).device
    if device.type == "cpu":
        assert (weights[0] - weights[1]).abs().max() < 1e-6
    else:  # not bit-reproducible, and the micro-batch shapes differ: within the tolerance data_helpers explains
        assert runs_agree(weights[0].to(device), weights[1].to(device)), (weights[0] - weights[1]).abs().max()
    assert (weights[0] - params(load_model("tiny:llama", seed=0))).abs().max() > 1e-4  # it did train


@pytest.mark.parametrize("cls,config", [(PPOTrainer, PPOConfig), (GRPOTrainer, GRPOConfig), (RLOOTrainer, RLOOConfig)])
def test_resume_matches_uninterrupted_run(tmp_path, cls, config):
    """Two optimizer steps per generation, max_steps 8, save_steps 3: the save due at step 3 (mid-generation)
    is written at 4, then 6 and the end of training (8). Resuming at 4 gives the same run."""
    rows = toy.arithmetic_problems(24, seed=0)
    if cls is PPOTrainer:
        extra = dict(score_scaling=True, target_kl=0.1, num_iterations=2)
    else:
        extra = dict(beta=0.1, num_generations=2, prompts=2, steps_per_generation=2)

    def run(out, resume=None):
        args = quick(config, output_dir=str(out), max_steps=8, save_strategy="steps", save_steps=3,
                     save_total_limit=None, lr_scheduler_type="linear", **extra)
        assert args.optimizer_steps_per_generation() == 2
        trainer = cls("tiny:llama", [varied, "arithmetic"], args=args, train_dataset=rows)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "a")
    start = params(AutoModelForCausalLMWithValueHead.from_pretrained("tiny:llama", seed=0) if cls is PPOTrainer
                   else load_model("tiny:llama", seed=0))
    assert (params(full.model) - start).abs().max() > 1e-4  # it trained: a resume that loses state would show
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.name.startswith("checkpoint")) == \
        ["checkpoint-4", "checkpoint-6", "checkpoint-8"]
    resumed = run(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-4"))
    assert resumed.state.global_step == full.state.global_step == 8
    # On the CPU the resumed run matches to 1e-6; on an accelerator, whose kernels are not bit-reproducible,
    # within the tolerance data_helpers explains.
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert runs_agree(p, q, rtol=0, atol=1e-6), name
    device = next(full.model.parameters()).device
    tolerance = logged_runs_agree(device, abs=1e-6)
    assert logged(full, "reward")[-1] == pytest.approx(logged(resumed, "reward")[-1], **tolerance)
    assert len(logged(full, "reward")) == len(logged(resumed, "reward")) == 4  # once per generation
    for key in ("loss", "reward", "kl"):
        assert logged(full, key) == pytest.approx(logged(resumed, key), **tolerance), key
    if cls is PPOTrainer:
        assert full.kl_ctl.value != 0.2 and full.generations == resumed.generations == 4
        if device.type == "cpu":
            assert full.kl_ctl.value == pytest.approx(resumed.kl_ctl.value, abs=1e-12)
        else:  # it moves <= 1.6e-5 a generation: compare the moves, or any tolerance would hide a lost state
            assert full.kl_ctl.value - 0.2 == pytest.approx(resumed.kl_ctl.value - 0.2, rel=ACCELERATOR_RTOL)


def test_prompt_dataset_errors(tmp_path):
    with pytest.raises(Exception, match="'prompt' column"):
        GRPOTrainer("tiny:llama", ["arithmetic"], args=quick(GRPOConfig), train_dataset=[{"question": "1+1="}])
    with pytest.raises(ValueError, match="cannot fill one generation"):
        GRPOTrainer("tiny:llama", ["arithmetic"], args=quick(GRPOConfig),
                    train_dataset=toy.arithmetic_problems(2)).train()
    with pytest.raises(ValueError, match="num_generations"):
        quick(GRPOConfig, num_generations=1)
    with pytest.raises(ValueError, match="not a multiple of num_generations"):
        GRPOTrainer("tiny:llama", ["arithmetic"],
                    args=quick(GRPOConfig, num_generations=4, per_device_train_batch_size=6),
                    train_dataset=toy.arithmetic_problems(16)).train()
    with pytest.raises(ValueError, match="multiple of gradient_accumulation_steps"):
        quick(GRPOConfig, steps_per_generation=3, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="pass reward_funcs"):
        GRPOTrainer("tiny:llama", args=quick(GRPOConfig), train_dataset=toy.arithmetic_problems(16)).train()


def test_cli_grpo_rloo_ppo_with_builtin_module_and_model_rewards(tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in toy.arithmetic_problems(16, seed=0)))
    module = tmp_path / "my_rewards.py"
    module.write_text("def short(prompts, completions, **kw):\n    return [-len(c) for c in completions]\n")
    reward_model = tmp_path / "rm"
    load_model("tiny:llama", "seq-cls", seed=0).save_pretrained(reward_model)
    from posttrain import load_tokenizer

    load_tokenizer("tiny:llama").save_pretrained(reward_model)
    sys.path.insert(0, str(tmp_path))
    try:
        for command, flag, reward, batch in (("grpo", "--reward_funcs", ["arithmetic"], "8"),
                                             ("rloo", "--reward", ["my_rewards:short"], "8"),
                                             ("ppo", "--reward_funcs", [str(reward_model), "length:4"], "4")):
            out = tmp_path / command
            code = main([command, "--model", "tiny:llama", "--dataset", str(data), flag, *reward,
                         "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", batch,
                         "--max_completion_length", "4", "--disable_tqdm", "true", "--eval_fraction", "0.25",
                         "--logging_steps", "1", "--save_strategy", "no",
                         "--generation_kwargs", '{"min_new_tokens": 2}']
                        + (["--num_generations", "2"] if command != "ppo" else ["--num_iterations", "1"]))
            assert code == 0
            line = capsys.readouterr().out.strip().splitlines()[-1]
            assert line.startswith(f"posttrain {command}: saved to {out} | 2 steps"), line
            assert "eval_reward" in line and " | reward " in line, line
            assert (out / "README.md").exists() and not (out / "log.jsonl").exists()
            assert not any(p.name.startswith("checkpoint") for p in out.iterdir())  # --save_strategy no
    finally:
        sys.path.remove(str(tmp_path))
    with pytest.raises(SystemExit):
        main(["grpo", "--model", "tiny:llama", "--dataset", str(data)])
    assert "--reward_funcs is required" in capsys.readouterr().err


def test_ppo_early_stop_and_score_processing(tokenizer):
    queries = [torch.tensor(tokenize_prompt(tokenizer, p)) for p in PROMPTS]
    responses = [torch.tensor([5, 6, 7]), torch.tensor([8, 9]), torch.tensor([9, 10])]
    steps = {}
    for early_stop in (None, 0.0):  # 4 passes x 3 micro-batches of 1 = 12 optimizer steps, unless stopped
        config = quick(PPOConfig, prompts=1, num_iterations=4, steps_per_generation=3, early_stop_kl=early_stop)
        trainer = PPOTrainer("tiny:llama", args=config)
        trainer.step(queries, responses, [5.0, -5.0, 1.0])
        steps[early_stop] = trainer.state.global_step
    assert steps[None] == 12 and 1 <= steps[0.0] < 12  # the policy moved: the rest of the generation is skipped
    trainer = PPOTrainer("tiny:llama", args=quick(PPOConfig, score_clip=2.0, score_scaling=True))
    first = trainer.process_scores(torch.tensor([4.0, 0.0, -4.0]))
    std = torch.tensor([4.0, 0.0, -4.0]).std().item()
    assert first.tolist() == pytest.approx([min(4 / std, 2.0), 0.0, max(-4 / std, -2.0)])


def test_ppo_early_stop_in_train_moves_on_to_new_prompts():
    """An early-stopped generation must not be sampled again: each generation takes the next prompts."""
    seen = []

    def length(prompts, completions, **kw):
        seen.append(tuple(prompts))
        return [float(len(c)) for c in completions]

    config = quick(PPOConfig, num_iterations=4, max_steps=6, early_stop_kl=1e-5)  # above the rounding of sampling-time log-probs
    rows = [{"prompt": f"#{i}: {r['prompt']}"} for i, r in enumerate(toy.arithmetic_problems(16, seed=0))]  # distinct
    trainer = PPOTrainer("tiny:llama", length, args=config, train_dataset=rows)
    trainer.train()
    # 6 optimizer steps; without the early stop that is 2 generations (4 steps each), with it more
    assert trainer.state.global_step == 6 and 3 <= len(seen) <= 4
    prompts = [p for batch in seen for p in batch]  # 16 prompts, 4 per generation: no repeat within an epoch
    assert len(set(prompts)) == len(prompts) == 4 * len(seen)


def test_conversational_prompts_use_the_chat_template(tokenizer):
    rows = [{"prompt": [{"role": "user", "content": f"What is {i}+1?"}], "answer": str(i + 1)} for i in range(8)]
    trainer = GRPOTrainer("tiny:llama", ["arithmetic"], args=quick(GRPOConfig, num_generations=2), train_dataset=rows)
    rendered = tokenizer.apply_chat_template(rows[0]["prompt"], tokenize=False, add_generation_prompt=True)
    assert trainer.train_prompts.ids[0] == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert trainer.train_prompts.values[0] == rows[0]["prompt"] and trainer.train_prompts.columns["answer"][0] == "1"
    assert rendered.endswith("<|im_start|>assistant\n")
    trainer.train()
    assert len(trainer.state.log_history) == 2 and all("reward" in e for e in trainer.state.log_history)


def test_cli_rest_and_grpo_in_the_calculator_environment(tmp_path, capsys):
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in toy.tool_problems(16, seed=0)))
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text("".join(json.dumps(r) + "\n" for r in toy.review_prompts(16, seed=0)))
    runs = {"grpo": ["--dataset", str(data), "--reward_funcs", "final_answer", "--env", "calculator",
                     "--max_steps", "2", "--num_generations", "2", "--max_completion_length", "8",
                     "--per_device_train_batch_size", "8", "--save_strategy", "no"],
            "rest": ["--dataset", str(reviews), "--reward_funcs", "sentiment", "--grow_steps", "1",
                     "--improve_steps", "2", "--num_generations", "2", "--max_completion_length", "6",
                     "--save_steps", "1", "--per_device_train_batch_size", "4"]}
    for command, args in runs.items():
        out = tmp_path / command
        code = main([command, "--model", "tiny:llama", *args, "--output_dir", str(out), "--logging_steps", "1",
                     "--disable_tqdm", "true", "--eval_fraction", "0.25"])
        assert code == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        steps = 2 if command == "grpo" else 3  # ReST: 1 grow x (1 + 2 improve) phases
        assert line.startswith(f"posttrain {command}: saved to {out} | {steps} steps") and "eval_reward" in line, line
        assert (out / "README.md").exists() and not (out / "log.jsonl").exists()
    assert (tmp_path / "rest" / "grow-0.jsonl").exists() and (tmp_path / "rest" / "checkpoint-3").is_dir()
    assert main(["grpo", "--model", "tiny:llama", "--dataset", str(data), "--reward_funcs", "final_answer",
                 "--env", "nope", "--output_dir", str(tmp_path / "nope")]) == 2  # one line, no traceback
    assert "Unknown environment" in capsys.readouterr().err


def test_ppo_without_reference_has_no_kl_penalty(tokenizer):
    trainer = PPOTrainer("tiny:llama", args=quick(PPOConfig, reference="none"))
    assert trainer.reference is None
    stats = trainer.step([torch.tensor(tokenize_prompt(tokenizer, PROMPTS[0]))], [torch.tensor([5, 6])], [1.0])
    assert stats["kl"] == 0.0 and stats["non_score_reward"] == 0.0 and stats["kl_sum"] == 0.0
    assert stats["policy_loss"] == stats["policy_loss"]  # it did update


def test_ppo_ends_when_every_sample_is_dropped(tmp_path):
    """A generation nobody scores has nothing to learn from, but its optimizer steps still count: training ends."""
    args = PPOConfig(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, num_iterations=2,
                     max_completion_length=3, save_strategy="no", logging_steps=1, disable_tqdm=True)
    trainer = PPOTrainer("tiny:llama", lambda completions, **kw: [None] * len(completions), args=args,
                         train_dataset=toy.arithmetic_problems(16, seed=0))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert trainer.state.global_step == 4 and trainer.generations == 2
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert [e["dropped"] for e in trainer.state.log_history if "dropped" in e] == [4.0, 4.0]


@pytest.mark.parametrize("cls,config", [(GRPOTrainer, GRPOConfig), (RLOOTrainer, RLOOConfig)])
def test_prefix_sharing_trains_like_the_unshared_run(tmp_path, tokenizer, cls, config):
    """Each prompt computed once per group (policy and reference forwards): the same samples, KL, losses and
    weights as the unshared run, for 3 steps of one window each (the order inside a window does not matter)."""
    rows = toy.arithmetic_problems(16, seed=0)
    runs = []
    for sharing in (False, True):
        args = quick(config, prompts=2, num_generations=4, max_steps=3, beta=0.1, output_dir=str(tmp_path / str(sharing)),
                     learning_rate=1e-2, adam_epsilon=1.0, bf16=False,  # eps 1: Adam does not blow up float noise
                     prefix_sharing=sharing)
        sampler = PolicySampler(tokenizer, args.sampling(), backend=EosEarly())  # completions of unequal length
        trainer = cls("tiny:llama", varied, args=args, train_dataset=rows, rollout_source=sampler)
        trainer.train()
        runs.append((trainer, params(trainer.model)))
    (plain, plain_weights), (shared, shared_weights) = runs
    assert shared.shared_group == 4 and plain.shared_group == 1
    for key in ("loss", "kl", "reward"):
        assert logged(shared, key) == pytest.approx(logged(plain, key), abs=1e-5), key
    assert (shared_weights - plain_weights).abs().max() < 1e-6
    assert (shared_weights - params(load_model("tiny:llama", seed=0))).abs().max() > 1e-4  # it did train


def test_prefix_sharing_needs_whole_groups_and_auto_turns_it_on_where_it_can():
    with pytest.raises(ValueError, match="multiple of num_generations"):
        GRPOTrainer("tiny:llama", varied, args=quick(GRPOConfig, num_generations=4, per_device_train_batch_size=6,
                                                     prefix_sharing=True, max_steps=1),
                    train_dataset=toy.arithmetic_problems(16, seed=0))
    with pytest.raises(ValueError, match="prefix_sharing needs groups"):
        PPOTrainer("tiny:llama", varied, args=quick(PPOConfig, prefix_sharing=True, max_steps=1),
                   train_dataset=toy.arithmetic_problems(16, seed=0))
    with pytest.raises(ValueError, match="'flash_attention_2' attention does not take"):
        prefix_sharing_group(True, SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2",
                                                                          is_encoder_decoder=False)), 4, 8)
    # auto (the default): on where it can be, off where it cannot, never an error
    auto = dict(max_steps=1, num_generations=4)
    data = toy.arithmetic_problems(16, seed=0)
    assert GRPOTrainer("tiny:llama", varied, args=quick(GRPOConfig, **auto), train_dataset=data).shared_group == 4
    assert GRPOTrainer("tiny:llama", varied, args=quick(GRPOConfig, **auto, per_device_train_batch_size=6),
                       train_dataset=data).shared_group == 1
    assert GRPOTrainer(load_model("tiny:llama", attn_implementation="eager"), varied, args=quick(GRPOConfig, **auto),
                       train_dataset=data, processing_class=tokenizer_of("tiny:llama")).shared_group == 4
