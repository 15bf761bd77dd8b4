"""Fixtures of the migration suite: the tiny model directories both libraries load by path."""

from __future__ import annotations

import types

import pytest

from . import harness


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """``models.causal``: a tiny Llama causal LM with its tokenizer (ChatML template, pad token), saved with
    ``save_pretrained`` -- TRL loads it with ``AutoModelForCausalLM``, posttrain with ``load_model``.
    ``models.seq_cls``: the same trunk as a one-label sequence classifier with a seeded score head saved
    in the checkpoint, so neither library initialises a head of its own (TRL's RewardTrainer loads a
    string with ``AutoModelForSequenceClassification``, ``num_labels=1``). ``models.causal_ref``: another
    seed of the causal LM, the explicit ``ref_model`` of DPO/KTO cases (with the policy as its own
    reference every DPO-family loss starts at a constant, e.g. log 2, which proves little)."""
    from posttrain.models.loading import load_model, load_tokenizer

    root = tmp_path_factory.mktemp("migration-models")
    tokenizer = load_tokenizer("tiny:llama")
    dirs = {}
    for name, task, seed in (("causal", "causal-lm", 0), ("seq_cls", "seq-cls", 0), ("causal_ref", "causal-lm", 1)):
        path = root / name
        model = load_model("tiny:llama", task, seed=seed)
        model.config.name_or_path = str(path)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[name] = str(path)
    return types.SimpleNamespace(**dirs)


def pytest_terminal_summary(terminalreporter):
    if harness.RESULTS:
        terminalreporter.section("migration: TRL 1.16 scripts run with posttrain")
        terminalreporter.write_line(harness.table())
