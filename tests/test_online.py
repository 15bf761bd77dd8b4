"""Rollouts and the online trainers' mechanics: left padding, stop handling, log-probs, the PPO step API,
dropped rewards, accumulation, resume and the CLI. (Learning is in test_rl_learning.py.)"""

import json

import pytest
import torch

from posttrain import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer, RLOOConfig, RLOOTrainer, load_model
from posttrain.cli import main
from posttrain.data import toy
from posttrain.data.tokenize import tokenize_prompt
from posttrain.rollout import PolicySampler, Rollout, SamplingConfig, forward_completion, pad_with_attention

PROMPTS = ["Honestly, the film", "I went to see the sequel last night and it", "Five"]


def quick(cls, **kw):
    base = dict(output_dir=kw.pop("output_dir", "/tmp/posttrain-test-online"), max_steps=2, per_device_batch_size=4,
                max_new_tokens=5, disable_tqdm=True, learning_rate=1e-3)
    return cls(**{**base, **kw})


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


def test_sampling_settings_are_checked():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingConfig(max_new_tokens=0)


def test_ppo_step_api_updates_policy_and_value_head(tokenizer):
    trainer = PPOTrainer("tiny:llama", quick(PPOConfig, num_epochs=2, mini_batch_size=2))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    queries = [torch.tensor(tokenize_prompt(tokenizer, p)) for p in PROMPTS]
    responses = [torch.tensor([5, 6, 7]), torch.tensor([8]), torch.tensor([9, 10])]
    stats = trainer.step(queries, responses, [1.0, -1.0, 0.5])
    for key in ("policy_loss", "value_loss", "kl", "kl_coef", "clipfrac", "approx_kl"):
        assert key in stats and stats[key] == stats[key], key  # present and not NaN
    changed = {n.split(".")[0] for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"pretrained_model", "v_head"}
    assert stats["epochs"] == 2
    with pytest.raises(ValueError, match="as many"):
        trainer.step(queries, responses[:2], [1.0, 2.0])


def test_seq2seq_ppo_trains(tmp_path):
    rows = toy.review_prompts(8, seed=0)
    trainer = PPOTrainer("tiny:t5", quick(PPOConfig, output_dir=str(tmp_path)), train_dataset=rows,
                         reward_funcs=["length:3"])
    history = trainer.train()
    assert len(history) == 2 and all(e["value_loss"] == e["value_loss"] for e in history)
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "value_head.safetensors").exists()


def test_dropped_samples_are_counted_and_get_no_weight():
    calls = []

    def some_none(prompts, completions, **kw):
        calls.append(len(completions))
        return [None if i % 4 == 0 else 1.0 for i in range(len(completions))]

    rows = toy.arithmetic_problems(16, seed=0)
    trainer = GRPOTrainer("tiny:llama", quick(GRPOConfig, num_generations=4), train_dataset=rows,
                          reward_funcs=some_none)
    history = trainer.train()
    assert history[0]["dropped"] == 4  # 16 completions, every 4th None
    assert calls == [16, 16]
    trainer = PPOTrainer("tiny:llama", quick(PPOConfig), train_dataset=rows, reward_funcs=some_none)
    assert trainer.train()[0]["dropped"] == 1


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    rows = toy.arithmetic_problems(16, seed=0)
    weights = []
    for accumulation in (1, 4):
        torch.manual_seed(0)
        config = quick(GRPOConfig, num_generations=4, gradient_accumulation_steps=accumulation, max_steps=1,
                       output_dir=str(tmp_path), mini_batch_size=8, learning_rate=1e-2, adam_epsilon=1.0)
        trainer = GRPOTrainer("tiny:llama", config, train_dataset=rows, reward_funcs=["length:3"])
        trainer.train()
        weights.append(torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()]))
    assert (weights[0] - weights[1]).abs().max() < 1e-6


@pytest.mark.parametrize("cls,config", [(PPOTrainer, PPOConfig), (GRPOTrainer, GRPOConfig), (RLOOTrainer, RLOOConfig)])
def test_resume_matches_uninterrupted_run(tmp_path, cls, config):
    rows = toy.arithmetic_problems(24, seed=0)
    extra = {"score_scaling": True, "target_kl": 0.1} if cls is PPOTrainer else {"beta": 0.1, "num_generations": 2}

    def run(out, resume=None):
        args = quick(config, output_dir=str(out), max_steps=6, save_steps=3, lr_scheduler_type="linear", **extra)
        trainer = cls("tiny:llama", args, train_dataset=rows, reward_funcs=["length:3", "arithmetic"])
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "a")
    resumed = run(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-3"))
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert (p - q).abs().max() < 1e-6, name
    assert full.log_history[-1]["reward"] == resumed.log_history[-1]["reward"]
    if cls is PPOTrainer:
        assert full.kl_ctl.value == resumed.kl_ctl.value != 0.2
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.name.startswith("checkpoint")) == \
        ["checkpoint-3", "checkpoint-6"]


def test_prompt_dataset_errors(tmp_path):
    with pytest.raises(Exception, match="'prompt' column"):
        GRPOTrainer("tiny:llama", quick(GRPOConfig), train_dataset=[{"question": "1+1="}], reward_funcs=["arithmetic"])
    with pytest.raises(ValueError, match="cannot fill one batch"):
        GRPOTrainer("tiny:llama", quick(GRPOConfig), train_dataset=toy.arithmetic_problems(2),
                    reward_funcs=["arithmetic"]).train()
    with pytest.raises(ValueError, match="num_generations"):
        quick(GRPOConfig, num_generations=1)


def test_cli_grpo_rloo_ppo_with_builtin_module_and_model_rewards(tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in toy.arithmetic_problems(16, seed=0)))
    module = tmp_path / "my_rewards.py"
    module.write_text("def short(prompts, completions, **kw):\n    return [-len(c) for c in completions]\n")
    reward_model = tmp_path / "rm"
    load_model("tiny:llama", "seq-cls", seed=0).save_pretrained(reward_model)
    from posttrain import load_tokenizer

    load_tokenizer("tiny:llama").save_pretrained(reward_model)
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        for command, reward in (("grpo", ["arithmetic"]), ("rloo", ["my_rewards:short"]),
                                ("ppo", [str(reward_model), "length:4"])):
            out = tmp_path / command
            code = main([command, "--model", "tiny:llama", "--dataset", str(data), "--reward", *reward,
                         "--output_dir", str(out), "--max_steps", "2", "--per_device_batch_size", "4",
                         "--max_new_tokens", "4", "--disable_tqdm", "true", "--eval_fraction", "0.25"])
            assert code == 0
            line = capsys.readouterr().out.strip().splitlines()[-1]
            assert line.startswith(f"posttrain {command}: saved to {out} | 2 steps") and "eval_reward" in line
            assert (out / "README.md").exists() and (out / "log.jsonl").exists()
    finally:
        sys.path.remove(str(tmp_path))
    with pytest.raises(SystemExit):
        main(["grpo", "--model", "tiny:llama", "--dataset", str(data)])
    assert "--reward is required" in capsys.readouterr().err


def test_ppo_early_stop_and_score_processing(tokenizer):
    queries = [torch.tensor(tokenize_prompt(tokenizer, p)) for p in PROMPTS]
    responses = [torch.tensor([5, 6, 7]), torch.tensor([8, 9]), torch.tensor([9, 10])]
    trainer = PPOTrainer("tiny:llama", quick(PPOConfig, num_epochs=4, mini_batch_size=1, early_stop_kl=0.0))
    assert trainer.step(queries, responses, [5.0, -5.0, 1.0])["epochs"] == 1  # the policy moved: stop after one
    trainer = PPOTrainer("tiny:llama", quick(PPOConfig, score_clip=2.0, score_scaling=True))
    first = trainer.process_scores(torch.tensor([4.0, 0.0, -4.0]))
    std = torch.tensor([4.0, 0.0, -4.0]).std().item()
    assert first.tolist() == pytest.approx([min(4 / std, 2.0), 0.0, max(-4 / std, -2.0)])


def test_conversational_prompts_use_the_chat_template(tokenizer):
    rows = [{"prompt": [{"role": "user", "content": f"What is {i}+1?"}], "answer": str(i + 1)} for i in range(8)]
    trainer = GRPOTrainer("tiny:llama", quick(GRPOConfig, num_generations=2), train_dataset=rows,
                          reward_funcs=["arithmetic"])
    rendered = tokenizer.apply_chat_template(rows[0]["prompt"], tokenize=False, add_generation_prompt=True)
    assert trainer.prompt_ids[0] == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert rendered.endswith("<|im_start|>assistant\n")
    assert len(trainer.train()) == 2


def test_cli_rest_and_grpo_in_the_calculator_environment(tmp_path, capsys):
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in toy.tool_problems(16, seed=0)))
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text("".join(json.dumps(r) + "\n" for r in toy.review_prompts(16, seed=0)))
    runs = {"grpo": ["--dataset", str(data), "--reward", "final_answer", "--env", "calculator",
                     "--max_steps", "2", "--num_generations", "2", "--max_new_tokens", "8"],
            "rest": ["--dataset", str(reviews), "--reward", "sentiment", "--grow_steps", "1", "--improve_steps", "2",
                     "--samples_per_prompt", "2", "--max_new_tokens", "6", "--save_steps", "1"]}
    for command, args in runs.items():
        out = tmp_path / command
        code = main([command, "--model", "tiny:llama", *args, "--output_dir", str(out), "--per_device_batch_size", "4",
                     "--disable_tqdm", "true", "--eval_fraction", "0.25"])
        assert code == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert line.startswith(f"posttrain {command}: saved to {out}") and "eval_reward" in line
    assert (tmp_path / "rest" / "grow-0.jsonl").exists() and (tmp_path / "rest" / "checkpoint-3").is_dir()
    with pytest.raises(ValueError, match="Unknown environment"):
        main(["grpo", "--model", "tiny:llama", "--dataset", str(data), "--reward", "final_answer", "--env", "nope"])


def test_ppo_without_reference_has_no_kl_penalty(tokenizer):
    trainer = PPOTrainer("tiny:llama", quick(PPOConfig, reference="none"))
    assert trainer.reference is None
    stats = trainer.step([torch.tensor(tokenize_prompt(tokenizer, PROMPTS[0]))], [torch.tensor([5, 6])], [1.0])
    assert stats["kl"] == 0.0 and stats["non_score_reward"] == 0.0
