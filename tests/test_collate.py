"""The data layer, part 3: collators, toy data and the whole rows-to-batch pipeline."""

from __future__ import annotations

import pytest
import torch

from data_helpers import CONV, EXPLICIT, LM, PC, PREF, SFT, pref, sft
from posttrain.data import toy
from posttrain.data.collate import IGNORE_INDEX, PreferenceCollator, SFTCollator
from posttrain.data.formats import load_rows, validate


# ---------------------------------------------------------------------------------------------------
# 6. Collators
# ---------------------------------------------------------------------------------------------------

FEATURES = [{"input_ids": [10, 11, 12, 13], "completion_mask": [0, 0, 1, 1]},
            {"input_ids": [20, 21, 22], "completion_mask": [1, 1, 1]}]


def test_sft_collator_padded():
    batch = SFTCollator(pad_token_id=0)(FEATURES)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13], [20, 21, 22, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    # -100 on masked prompt tokens, on the first token of each example and on padding
    assert batch["labels"].tolist() == [[-100, -100, 12, 13], [-100, 21, 22, -100]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_sft_collator_pad_to_multiple_of():
    batch = SFTCollator(pad_token_id=0, pad_to_multiple_of=8)(FEATURES)
    assert {k: tuple(v.shape) for k, v in batch.items()} == {k: (2, 8) for k in batch}
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13, 0, 0, 0, 0], [20, 21, 22, 0, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 4 + [0] * 4, [1] * 3 + [0] * 5]
    assert batch["labels"].tolist() == [[-100, -100, 12, 13] + [-100] * 4, [-100, 21, 22] + [-100] * 5]
    exact = SFTCollator(pad_token_id=0, pad_to_multiple_of=4)(FEATURES)  # already a multiple: no extra columns
    assert exact["input_ids"].shape == (2, 4) and exact["attention_mask"].shape == (2, 4)


def test_sft_collator_padding_free():
    batch = SFTCollator(pad_token_id=0, padding_free=True)(FEATURES)
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention_mask
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13, 20, 21, 22]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, -100, 12, 13, -100, 21, 22]]
    assert 0 not in batch["input_ids"].tolist()[0]


def test_packed_and_padded_batches_train_on_the_same_tokens(tok):
    rows = toy.prompt_completion(4, seed=1)
    feats = [sft(tok, r, PC) for r in rows]
    padded = SFTCollator(tok.pad_token_id)(feats)
    packed = SFTCollator(tok.pad_token_id, padding_free=True)(feats)
    per_example = [padded["labels"][i, :len(f["input_ids"])].tolist() for i, f in enumerate(feats)]
    assert packed["labels"][0].tolist() == sum(per_example, [])
    assert packed["input_ids"][0].tolist() == sum((f["input_ids"] for f in feats), [])
    assert tok.pad_token_id not in packed["input_ids"][0].tolist()
    starts = [sum(len(f["input_ids"]) for f in feats[:i]) for i in range(len(feats))]
    assert [packed["position_ids"][0, s].item() for s in starts] == [0] * len(feats)
    assert [packed["labels"][0, s].item() for s in starts] == [IGNORE_INDEX] * len(feats)
    # trainable labels: the completion + eos tokens of each example, nothing else
    expected = sum(len(f["input_ids"]) - f["completion_mask"].index(1) for f in feats)
    assert (padded["labels"] != IGNORE_INDEX).sum().item() == expected
    assert (padded["input_ids"] == tok.pad_token_id).sum().item() == (padded["attention_mask"] == 0).sum().item()


def test_preference_collator():
    feats = [{"prompt_ids": [1, 2], "chosen_ids": [3, 4, 5], "rejected_ids": [6]},
             {"prompt_ids": [7], "chosen_ids": [8], "rejected_ids": [9, 10]}]
    batch = PreferenceCollator(pad_token_id=0)(feats)
    assert set(batch) == {"input_ids", "attention_mask", "completion_mask"}
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [7, 8, 0, 0, 0],   # chosen 0, chosen 1
                                           [1, 2, 6, 0, 0], [7, 9, 10, 0, 0]]  # rejected 0, rejected 1
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 1, 0, 0]]


def test_preference_collator_margin(tok):
    rows = [{"prompt": "The film", "chosen": " was great.", "rejected": " was dull.", "margin": 1},
            {"prompt": "The plot", "chosen": " was clever.", "rejected": " was a mess.", "margin": 0.25}]
    feats = [pref(tok, r, EXPLICIT) for r in rows]
    batch = PreferenceCollator(tok.pad_token_id)(feats)
    assert batch["margin"].dtype == torch.float32 and batch["margin"].tolist() == [1.0, 0.25]
    assert batch["input_ids"].shape[0] == 4
    for i, f in enumerate(feats):
        for j, key in ((i, "chosen_ids"), (i + 2, "rejected_ids")):
            n = len(f["prompt_ids"]) + len(f[key])
            assert batch["input_ids"][j, :n].tolist() == f["prompt_ids"] + f[key]
            assert batch["completion_mask"][j].tolist() == ([0] * len(f["prompt_ids"]) + [1] * len(f[key])
                                                            + [0] * (batch["input_ids"].shape[1] - n))


# ---------------------------------------------------------------------------------------------------
# 7. Toy data and the whole pipeline
# ---------------------------------------------------------------------------------------------------

GENERATORS = [toy.reviews, toy.prompt_completion, toy.preference_pairs, toy.conversations]


@pytest.mark.parametrize("make", GENERATORS, ids=[g.__name__ for g in GENERATORS])
def test_toy_is_deterministic_for_a_seed(make):
    rows = make(12, seed=3)
    assert len(rows) == 12
    assert rows == make(12, seed=3)
    assert rows != make(12, seed=4)
    assert make(12) == make(12, seed=0)
    assert make(5, seed=3) == rows[:5]


def test_toy_content_is_labelled_by_sentiment():
    for row in toy.preference_pairs(20, seed=1):
        assert any(p in row["chosen"] for p in toy.POSITIVE) and any(t in row["chosen"] for t in toy.TAILS_POS)
        assert any(n in row["rejected"] for n in toy.NEGATIVE) and any(t in row["rejected"] for t in toy.TAILS_NEG)
    for i, row in enumerate(toy.prompt_completion(10, positive=None)):
        assert any(p in row["completion"] for p in (toy.POSITIVE if i % 2 else toy.NEGATIVE))
    assert all(any(n in r["completion"] for n in toy.NEGATIVE) for r in toy.prompt_completion(6, positive=False))


@pytest.mark.parametrize("make, accepted, fmt", [
    (toy.reviews, SFT, LM), (toy.prompt_completion, SFT, PC), (toy.conversations, SFT, CONV),
    (toy.preference_pairs, PREF, EXPLICIT),
])
def test_toy_rows_validate_and_tokenize(tok, make, accepted, fmt):
    dataset, found = validate(load_rows(make(6, seed=2)), accepted)
    assert found == fmt
    if fmt.name in PREF:
        feats = [pref(tok, row, fmt, index=i) for i, row in enumerate(dataset)]
        batch = PreferenceCollator(tok.pad_token_id)(feats)
        assert batch["input_ids"].shape[0] == 12
    else:
        feats = [sft(tok, row, fmt, max_length=64, index=i) for i, row in enumerate(dataset)]
        batch = SFTCollator(tok.pad_token_id)(feats)
        assert batch["input_ids"].shape[0] == 6
        assert (batch["labels"] != IGNORE_INDEX).sum().item() == sum(sum(f["completion_mask"][1:]) for f in feats)
