"""ReST (examples/rest.py as shipped): rewards rise from Improve step to Improve step and from one Grow step
to the next; every grown sample is on disk; resuming between steps reproduces the same grown data and
weights."""

import importlib.util
import json
from pathlib import Path

import pytest

from posttrain import load_model
from posttrain.data import toy
from posttrain.trainers.rest import ReSTConfig, ReSTTrainer

from data_helpers import runs_agree


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"posttrain_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """examples/rest.py as shipped: SFT on mixed reviews, then ReST (2 Grow x 3 Improve) on VADER."""
    out = tmp_path_factory.mktemp("rest-example")
    return out, load_example("rest").run(str(out), disable_tqdm=True)


def config(tmp_path, **kw):
    """The example's settings (Improve: optimizer steps of 16 samples, 2 passes; Grow: 32 prompts x num_generations
    per batch), the old defaults the test relied on (seed 0), and a checkpoint after every phase."""
    base = dict(output_dir=str(tmp_path), grow_steps=2, improve_steps=3, num_generations=4, max_completion_length=16,
                learning_rate=1e-4, per_device_train_batch_size=16, steps_per_generation=8,
                per_device_eval_batch_size=32, num_iterations=2, save_strategy="steps", save_steps=1,
                save_total_limit=None, seed=0, report_to="none", disable_tqdm=True)
    return ReSTConfig(**{**base, **kw})


def test_rest_raises_sentiment_step_by_step(example):
    out, trainer = example
    log = [e for e in trainer.state.log_history if "improve" in e]  # the phases (not the evaluation before)
    print(f"\nReST on held-out review openings (VADER; the SFT model scores {trainer.start_reward:+.4f}):\n"
          f"{trainer.table()}")
    grows = [e for e in log if e["improve"] < 0]
    improves = [[e for e in log if e["grow"] == g and e["improve"] >= 0] for g in (0, 1)]
    assert grows[1]["grow_reward"] > grows[0]["grow_reward"]
    for steps in improves:
        rewards = [e["reward"] for e in steps]
        thresholds = [e["threshold"] for e in steps]
        assert rewards == sorted(rewards) and rewards[-1] > rewards[0], rewards
        assert thresholds == sorted(thresholds) and len({e["kept"] for e in steps}) == 3
    assert improves[0][0]["reward"] > trainer.start_reward
    grown = [json.loads(line) for line in (out / "rest" / "grow-1.jsonl").read_text().splitlines()]
    assert len(grown) == 140 * 4 and {"prompt", "completion", "completion_ids", "reward"} <= set(grown[0])
    assert [e["step"] for e in log] == list(range(1, 9)) and trainer.state.global_step == 8  # a step is a phase


def test_rest_resume_between_steps_reproduces_data_and_weights(example, tmp_path):
    model_dir = str(example[0] / "sft")
    train = toy.review_prompts(40, seed=3)
    held = toy.review_prompts(16, seed=4)
    small = dict(improve_steps=2, threshold_quantiles=[0.5, 0.8], num_generations=2)

    def run(out, resume=None):
        trainer = ReSTTrainer(load_model(model_dir), ["sentiment"], args=config(out, **small),
                              train_dataset=train[:40], eval_dataset=held[:16])
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "a")
    resumed = run(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-2"))  # after grow 0, improve 0
    assert (tmp_path / "a" / "grow-1.jsonl").read_text() == (tmp_path / "b" / "grow-1.jsonl").read_text()
    assert not (tmp_path / "b" / "grow-1.jsonl").samefile(tmp_path / "a" / "grow-1.jsonl")
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert (p - q).abs().max() < 1e-6, name
    assert [e.get("reward") for e in full.state.log_history] == [e.get("reward") for e in resumed.state.log_history]
    assert resumed.state.global_step == full.state.global_step == 6


def test_rest_improve_with_accumulation_equals_one_big_batch(tmp_path):
    """An Improve step's optimizer steps of 16 samples as 1 micro-batch of 16 or 2 of 8: the same weights and the
    same logged nll (the token mean of each optimizer step's samples)."""
    import torch

    # bf16=False: an fp32 identity (bf16 autocast, the default on a bf16 GPU, rounds the micro-batches apart)
    def trainer(accumulation):
        args = config(tmp_path / str(accumulation), per_device_train_batch_size=16 // accumulation,
                      gradient_accumulation_steps=accumulation, num_generations=2, save_strategy="no", bf16=False)
        return ReSTTrainer("tiny:llama", ["sentiment"], args=args, train_dataset=toy.review_prompts(12, seed=3))

    one, two = trainer(1), trainer(2)
    samples = one.grow(0)  # 24 samples: one optimizer step of 16 and one of 8 per pass
    assert len(samples) == 24
    start = [p.detach().clone() for p in one.model.parameters()]
    stats_one, stats_two = one.improve(samples), two.improve(samples)
    assert stats_two["nll"] == pytest.approx(stats_one["nll"], rel=1e-5)
    assert any(not torch.equal(p, s) for p, s in zip(one.model.parameters(), start))  # Improve moved the weights
    # On the CPU to atol 1e-6 (allclose's default rtol 1e-5); on an accelerator within data_helpers' tolerance
    for (name, p), q in zip(one.model.named_parameters(), two.model.parameters()):
        assert runs_agree(p, q, atol=1e-6), name


def test_rest_config_errors():
    with pytest.raises(ValueError, match="thresholds"):
        ReSTConfig(improve_steps=2, thresholds=[0.1])
    with pytest.raises(ValueError, match="threshold_quantiles"):
        ReSTConfig(improve_steps=4)
    with pytest.raises(ValueError, match="max_steps"):  # a ReST step is a phase: grow_steps x (1 + improve_steps)
        ReSTConfig(max_steps=5)
