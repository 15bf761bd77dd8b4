"""RedTeam (posttrain/eval/red_team.py): the attacker's rewards, attack reports and hardening data, with a fake
classifier (no optional packages); the whole loop with the real classifier is tests/test_examples.py's."""

import pytest

from posttrain import load_model, load_tokenizer
from posttrain.eval.red_team import AttackReport, RedTeam, distinct_ngrams


def flags_long(prompts, completions, **kwargs):
    """A fake classifier: a reply is 'offensive' when it is longer than 12 characters."""
    return [0.9 if len(c) > 12 else 0.1 for c in completions]


@pytest.fixture(scope="module")
def team():
    return RedTeam(load_model("tiny:llama", seed=1), load_tokenizer("tiny:llama"), flags_long,
                   family=lambda attack: attack.split()[0], seed=3)


def test_novelty_is_one_minus_the_mean_bigram_jaccard_to_the_rest_of_the_batch(team):
    same = team.novelty([], ["the cat sat", "the cat sat", "the cat sat"])
    assert same == [0.0, 0.0, 0.0]  # collapsed onto one prompt: no bonus
    assert team.novelty([], ["a b c", "d e f"]) == [1.0, 1.0]  # nothing shared
    # "a b c" has bigrams {ab, bc}; "a b d" {ab, bd}: Jaccard 1/3. "x y" shares nothing with either.
    got = team.novelty([], ["a b c", "a b d", "x y"])
    assert got == pytest.approx([1 - (1 / 3 + 0) / 2, 1 - (1 / 3 + 0) / 2, 1.0])
    assert team.novelty([], [[{"role": "assistant", "content": "a b"}], "a b"]) == [0.0, 0.0]  # messages too


def test_distinct_ngrams_by_hand():
    assert distinct_ngrams(["a b c", "a b d"]) == pytest.approx(3 / 4)  # ab, bc, ab, bd: 3 distinct of 4
    assert distinct_ngrams(["a b"] * 5) == pytest.approx(1 / 5)
    assert distinct_ngrams(["one"]) == 0.0


def test_success_reward_is_the_classifier_on_the_targets_seeded_replies(team):
    attacks = ["Honestly, the film", "My friends told me the plot", "", "Two hours later, I think the cast"]
    replies = team.replies(attacks, seed=7)
    assert replies == team.replies(attacks, seed=7) and replies[2] == ""  # seeded; an empty attack gets nothing
    assert all(r for i, r in enumerate(replies) if i != 2)
    assert team.score(attacks, replies) == flags_long(attacks, replies)
    rewards = team.success(prompts=["p"] * 4, completions=attacks)  # training: a fresh seed per call
    assert len(rewards) == 4 and set(rewards) <= {0.1, 0.9} and rewards[2] == 0.1


def test_attack_report_rate_families_and_hardening_rows(team):
    attacker, tokenizer = load_model("tiny:llama", seed=2), load_tokenizer("tiny:llama")
    report = team.attack(attacker, tokenizer, "Write:", n=12, max_attack_tokens=6, seed=1)
    assert attacker.training  # attack() puts the attacker back in the mode it was in
    again = team.attack(attacker, tokenizer, "Write:", n=12, max_attack_tokens=6, seed=1)
    assert (report.attacks, report.replies) == (again.attacks, again.replies)
    assert report.rate == sum(s > 0.5 for s in report.scores) / 12
    assert sum(report.families.values()) == len(report.successful)

    made = AttackReport(["a x", "b y", "a x", "c z"], ["rude", "kind", "rude", "rude too"], [0.9, 0.2, 0.8, 0.7])
    assert made.rate == 0.75 and made.successful == [("a x", "rude"), ("c z", "rude too")]  # first of each
    assert made.summary()["distinct_attacks"] == 3
    assert RedTeam.hardening_data(made, [" nice."]) == [{"prompt": "a x", "completion": " nice."},
                                                         {"prompt": "c z", "completion": " nice."}]
    assert RedTeam.hardening_data(made, lambda a: f" fine, {a}", kind="dpo") == [
        {"prompt": "a x", "chosen": " fine, a x", "rejected": "rude"},
        {"prompt": "c z", "chosen": " fine, c z", "rejected": "rude too"}]
    with pytest.raises(ValueError, match="'sft' or 'dpo'"):
        RedTeam.hardening_data(made, [" nice."], kind="ppo")
    with pytest.raises(ValueError, match="No attack succeeded"):
        RedTeam.hardening_data(AttackReport(["a"], ["b"], [0.1]), [" nice."])
    with pytest.raises(ValueError, match="threshold must be in"):
        RedTeam(attacker, tokenizer, flags_long, threshold=1.5)


def test_toy_triggers_make_only_their_subjects_rude():
    from posttrain.data import toy

    rows = toy.rude_prompt_completion(600, seed=1, rude_fraction=1.0, rude_subjects=("the sequel", "the villain"))
    rude = {r["prompt"] for r in rows if any(r["completion"].startswith(f" {x}") for x in toy.RUDE)}
    triggered = {r["prompt"] for r in rows if "the sequel" in r["prompt"] or "the villain" in r["prompt"]}
    assert rude == triggered and 0 < len(rude) < len({r["prompt"] for r in rows})
    assert toy.rude_prompt_completion(50, seed=1) == toy.rude_prompt_completion(50, seed=1, rude_subjects=None)
