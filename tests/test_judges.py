"""Judges (posttrain/eval/judges.py): verdicts in both orders, the LLM judge's log-prob verdict by hand, reward
model judges, win-rate interval coverage and Bradley-Terry ratings recovering a known ordering."""

import math
import random

import pytest
import torch

from posttrain import load_model, load_tokenizer
from posttrain.eval.judges import (LLMJudge, RewardModelJudge, RuleJudge, WinRateCallback, bradley_terry,
                                   compare_models, rating_intervals, win_rate)

PROMPTS = ["Say something nice.", "Count to three.", "Name a colour."]
PAIRS = [["lovely day", "bad"], ["one", "one two three"], ["red", "red"]]


def test_rule_judge_verdicts_do_not_depend_on_the_order_shown():
    judge = RuleJudge(lambda prompt, completion: len(completion))
    assert judge.score(PROMPTS, ["ab", "abc", ""]) == [2.0, 3.0, 0.0]
    for shuffle in (False, True):
        for seed in range(5):
            assert judge.judge(PROMPTS, PAIRS, shuffle_order=shuffle, seed=seed) == [0, 1, -1]  # -1: a tie
            assert judge.judge(PROMPTS, PAIRS, shuffle_order=shuffle, return_scores=True, seed=seed) == [1.0, 0.0, 0.5]
    swapped = [pair[::-1] for pair in PAIRS]
    assert judge.judge(PROMPTS, swapped, shuffle_order=False) == [1, 0, -1]
    with pytest.raises(ValueError, match="one pair of completions per prompt"):
        judge.judge(PROMPTS, [["a", "b", "c"]] * 3)


def test_llm_judge_reads_the_verdict_from_the_answer_tokens_in_both_orders():
    tokenizer, model = load_tokenizer("tiny:llama"), load_model("tiny:llama", seed=3).eval()
    template = "Question: {prompt}\nAnswer 1: {first}\nAnswer 2: {second}\nThe better answer is"
    choices = (" 1", " 2")  # one token each in the tiny tokenizer (" B" is two)
    judge = LLMJudge(model, tokenizer, template=template, choices=choices)
    a_id, b_id = (tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in choices)

    def by_hand(prompt, first, second):
        ids = tokenizer(judge.template.format(prompt=prompt, first=first, second=second),
                        add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        return (math.exp(logits[a_id]) / (math.exp(logits[a_id]) + math.exp(logits[b_id])))

    expected = [(by_hand(p, a, b) + 1 - by_hand(p, b, a)) / 2 for p, (a, b) in zip(PROMPTS, PAIRS)]
    got = judge.judge(PROMPTS, PAIRS, shuffle_order=False, return_scores=True)
    assert got == pytest.approx(expected, abs=1e-5)
    # position-swap debiasing: showing the pair the other way round gives exactly 1 - p
    flipped = judge.judge(PROMPTS, [pair[::-1] for pair in PAIRS], shuffle_order=False, return_scores=True)
    assert [1 - p for p in flipped] == pytest.approx(got, abs=1e-6)
    assert judge.judge(PROMPTS, PAIRS, shuffle_order=True, return_scores=True) == pytest.approx(got, abs=1e-6)
    one_order = LLMJudge(model, tokenizer, template, choices, swap=False).judge(PROMPTS, PAIRS, shuffle_order=False, return_scores=True)
    assert one_order == pytest.approx([by_hand(p, a, b) for p, (a, b) in zip(PROMPTS, PAIRS)], abs=1e-5)
    with pytest.raises(ValueError, match="one distinct token each"):
        LLMJudge(model, tokenizer, choices=(" A", " B"))  # " B" is two tokens here
    with pytest.raises(ValueError, match="must contain \\{second\\}"):
        LLMJudge(model, tokenizer, template="{prompt} {first}", choices=choices)


def test_reward_model_judge_is_the_bradley_terry_probability_of_its_scores():
    tokenizer = load_tokenizer("tiny:llama")
    judge = RewardModelJudge(load_model("tiny:llama", "seq-cls", seed=2), tokenizer)
    firsts, seconds = judge.score(PROMPTS, [p[0] for p in PAIRS]), judge.score(PROMPTS, [p[1] for p in PAIRS])
    got = judge.judge(PROMPTS, PAIRS, shuffle_order=True, return_scores=True)
    assert got == pytest.approx([1 / (1 + math.exp(b - a)) for a, b in zip(firsts, seconds)], abs=1e-6)
    assert judge.judge(PROMPTS, PAIRS) == [0 if a > b else 1 for a, b in zip(firsts, seconds)][:2] + [-1]


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_win_rate_interval_has_its_stated_coverage(p):
    rng, n, trials = random.Random(0), 60, 2000
    covered = 0
    for _ in range(trials):
        result = win_rate([1.0 if rng.random() < p else 0.0 for _ in range(n)])
        covered += result.low <= p <= result.high
    assert 0.92 <= covered / trials <= 0.98, covered / trials
    assert win_rate([1, 1, 0, 0.5]).rate == pytest.approx(0.625)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        win_rate([2.0])


def test_bradley_terry_recovers_a_known_ordering_with_intervals_covering_it():
    truth = [1200.0, 1100.0, 950.0, 750.0]  # mean 1000, as the fitted ratings are centred
    rng, comparisons = random.Random(1), []
    for _ in range(1200):
        i, j = rng.sample(range(4), 2)
        p = 1 / (1 + 10 ** ((truth[j] - truth[i]) / 400))
        comparisons.append((i, j, 1.0 if rng.random() < p else 0.0))
    ratings = bradley_terry(comparisons, 4)
    assert sorted(range(4), key=lambda k: -ratings[k]) == [0, 1, 2, 3]
    intervals = rating_intervals(comparisons, 4, samples=100)
    for true, (low, high) in zip(truth, intervals):
        assert low <= true <= high, (true, low, high)
    assert bradley_terry([(0, 1, 1.0)] * 5, 2)[0] < 2000  # a model that never lost stays finite


def test_compare_models_gives_win_rates_and_ratings_in_the_judges_order():
    prompts = [f"p{i}" for i in range(40)]
    completions = {"short": ["a"] * 40, "medium": ["abc"] * 40, "long": ["abcdef"] * 40}
    result = compare_models(completions, prompts, RuleJudge(lambda p, c: len(c)), baseline="short")
    assert result["win_rates"]["long"].rate == 1.0 and result["win_rates"]["medium"].rate == 1.0
    ratings = {k: v[0] for k, v in result["ratings"].items()}
    assert ratings["long"] > ratings["medium"] > ratings["short"]
    assert result["table"].splitlines()[2].startswith("| long |")
    with pytest.raises(ValueError, match="baseline 'x' is not one of"):
        compare_models(completions, prompts, RuleJudge(len), baseline="x")


def test_win_rate_callback_logs_the_win_rate_against_the_starting_model(tmp_path):
    from posttrain import GRPOConfig, GRPOTrainer
    from posttrain.data import toy

    rows = toy.arithmetic_problems(16, seed=0)
    args = GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=4, report_to="none", disable_tqdm=True, save_strategy="no")
    trainer = GRPOTrainer("tiny:llama", lambda completions, **kw: [0.0] * len(completions), args=args,
                          train_dataset=rows, eval_dataset=rows[:6])
    callback = WinRateCallback(RuleJudge(lambda prompt, completion: len(completion)), trainer, use_soft_judge=True)
    trainer.add_callback(callback)
    assert len(callback.prompts) == 6
    callback.on_train_begin(args, trainer.state, trainer.control)
    same = list(callback.reference)
    trainer.evaluate()  # nothing trained: the same samples, every pair a tie
    logged = [e for e in trainer.state.log_history if "eval_win_rate" in e]
    assert logged[-1]["eval_win_rate"] == 0.0 and logged[-1]["eval_avg_win_prob"] == 0.5
    callback.reference = [""] * 6  # a starting model that said nothing: every longer completion wins
    trainer.evaluate()
    logged = [e for e in trainer.state.log_history if "eval_win_rate" in e]
    assert logged[-1]["eval_win_rate"] == sum(len(c) > 0 for c in same) / 6


def test_posttrain_judge_command_writes_win_rates_ratings_and_a_plot(tmp_path, capsys, monkeypatch):
    import json

    (tmp_path / "judge_rules.py").write_text("def chars(prompts, completions, **kw):\n"
                                              "    return [len(c) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from posttrain.cli import main

    for seed in (0, 1):
        load_model("tiny:llama", seed=seed).save_pretrained(tmp_path / f"m{seed}")
        load_tokenizer("tiny:llama").save_pretrained(tmp_path / f"m{seed}")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about {w}."}) + "\n" for w in ["cats", "rain", "tea"]))
    out = tmp_path / "judged"
    for judge in ("judge_rules:chars", f"llm={tmp_path / 'm0'}"):
        assert main(["judge", "--models", f"base={tmp_path / 'm0'}", f"other={tmp_path / 'm1'}", "--prompts",
                     str(prompts), "--judge", judge, "--choices", " 1", " 2", "--max_new_tokens", "6",
                     "--output_dir", str(out)]) == 0
        result = json.loads((out / "judge.json").read_text())
        assert set(result["ratings"]) == {"base", "other"} and result["win_rates"]["other"]["n"] == 3
        assert (out / "ratings.png").stat().st_size > 0 and "| other |" in (out / "judge.md").read_text()
    printed = capsys.readouterr().out
    assert "win rate vs base" in printed
    with pytest.raises(SystemExit):
        main(["judge", "--models", str(tmp_path / "m0"), "--prompts", str(prompts), "--judge", "judge_rules:chars"])
