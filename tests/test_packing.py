"""Packing: TRL's bin packing, padding-free batches, and that neither lets examples see each other."""

import datasets
import pytest
import torch

from posttrain import SFTConfig, SFTTrainer, load_model
from posttrain.data import toy
from posttrain.data.collate import IGNORE_INDEX, SFTCollator
from posttrain.data.packing import best_fit_decreasing, pack_dataset

from data_helpers import on_device

ARCHS = ["llama", "gpt2", "qwen2"]


def rows(n=12):
    out = toy.prompt_completion(n, seed=3)
    for i, row in enumerate(out):  # varied lengths, so rows hold different numbers of examples
        row["completion"] += " Really." * (i % 5)
    return out


def config(tmp_path, **kw):
    return SFTConfig(**{**dict(output_dir=str(tmp_path / "out"), max_length=64, report_to="none", save_strategy="no",
                                seed=0, disable_tqdm=True), **kw})


def tokenized(lengths):
    """Rows whose ids are 1, 2, 3, ... so a packed row shows which example went where."""
    ids, start = [], 1
    for n in lengths:
        ids.append(list(range(start, start + n)))
        start += n
    return datasets.Dataset.from_dict({"input_ids": ids, "completion_mask": [[1] * n for n in lengths]})


# ---- bin packing ---------------------------------------------------------------------------------------

def test_best_fit_decreasing_by_hand():
    # Longest first into the fullest bin that still fits: 6 -> A (2 left), 5 -> B (3), 4 -> C (4),
    # 3 -> B (full), 2 -> A (full), 2 -> C (2 left), 1 -> C (1 left).
    assert best_fit_decreasing([6, 5, 4, 3, 2, 2, 1], 8) == [[0, 4], [1, 3], [2, 5, 6]]
    assert best_fit_decreasing([3, 3, 3], 3) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="1..4"):
        best_fit_decreasing([5], 4)


def test_strategies_on_trl_documented_example():
    # The example of trl.pack_dataset's docstring (1.16): lengths 5, 2, 3, 1 into rows of 4.
    data = tokenized([5, 2, 3, 1])
    bfd = pack_dataset(data, 4, "bfd")
    assert bfd["input_ids"] == [[1, 2, 3, 4], [8, 9, 10, 11], [6, 7]]  # the 5th token of the long one is dropped
    assert bfd["seq_lengths"] == [[4], [3, 1], [2]]
    split = pack_dataset(data, 4, "bfd_split")
    assert split["input_ids"] == [[1, 2, 3, 4], [8, 9, 10, 5], [6, 7, 11]]  # the overflow is its own example
    assert split["seq_lengths"] == [[4], [3, 1], [2, 1]]
    wrapped = pack_dataset(data, 4, "wrapped")
    assert wrapped["input_ids"] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11]] and "seq_lengths" not in wrapped.column_names
    with pytest.raises(ValueError, match="packing_strategy must be one of"):
        pack_dataset(data, 4, "greedy")


@pytest.mark.parametrize("strategy", ["bfd", "bfd_split", "wrapped"])
def test_same_rows_as_trl(strategy):
    trl = pytest.importorskip("trl")
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 90, (2500,), generator=g).tolist()  # several 1,000-example blocks, some too long
    ours = pack_dataset(tokenized(lengths), 64, strategy)
    data = tokenized(lengths).rename_column("completion_mask", "labels")
    theirs = trl.pack_dataset(data, 64, strategy)
    assert ours["input_ids"] == theirs["input_ids"]
    if strategy != "wrapped":
        assert ours["seq_lengths"] == theirs["seq_lengths"]


# ---- labels and positions ------------------------------------------------------------------------------

def test_labels_never_cross_an_example_boundary():
    data = pack_dataset(datasets.Dataset.from_dict({
        "input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]], "completion_mask": [[0, 1, 1], [1, 1], [0, 0, 1, 1]]}), 6)
    assert data["seq_lengths"] == [[4, 2], [3]]
    batch = SFTCollator(0, padding_free=True)(list(data))
    assert batch["input_ids"].tolist() == [[6, 7, 8, 9, 4, 5, 1, 2, 3]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 0, 1, 2]]
    # The first token of each example is never a target, so no example is trained to predict the next one.
    assert batch["labels"].tolist() == [[-100, -100, 8, 9, -100, 5, -100, 2, 3]]
    padded = SFTCollator(0, pad_to_multiple_of=4, padding_free=True)(list(data))
    assert padded["input_ids"].shape == (1, 12) and padded["labels"][0, 9:].tolist() == [IGNORE_INDEX] * 3


def test_packed_rows_are_padding_free_even_if_not_asked():
    data = pack_dataset(tokenized([3, 2]), 8)
    batch = SFTCollator(0)(list(data))
    assert "attention_mask" not in batch and batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]


# ---- no attention across examples, and the loss of a packed batch -------------------------------------

@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ARCHS)
def test_no_token_attends_across_examples(arch, attn):
    """Changing one example of a packed row leaves the logits of the others unchanged."""
    model = load_model(f"tiny:{arch}", seed=0).eval()
    model.config._attn_implementation = attn
    feats = [{"input_ids": list(range(10 + 7 * i, 10 + 7 * i + n)), "completion_mask": [1] * n} for i, n in
             enumerate([7, 5, 9])]
    batch = SFTCollator(0, padding_free=True)(feats)
    changed = batch["input_ids"].clone()
    changed[0, 7:12] = torch.arange(500, 505)  # the second example
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        b = model(input_ids=changed, position_ids=batch["position_ids"], use_cache=False).logits
        alone = model(input_ids=batch["input_ids"][:, 12:], use_cache=False).logits
    others = torch.cat([torch.arange(0, 7), torch.arange(12, 21)])
    assert (a[0, 7:12] - b[0, 7:12]).abs().max() > 1e-3  # the change did change its own example
    assert torch.allclose(a[0, others], b[0, others], atol=1e-6)
    assert torch.allclose(a[0, 12:], alone[0], atol=1e-5)  # the third example is computed as if alone


def _loss(trainer, batch):
    with torch.no_grad():  # the Trainer moved the model to the accelerator, if any; the collated batch is on the CPU
        return trainer.compute_loss(trainer.model, on_device(batch, trainer.model.device)).item()


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_loss_equals_unpacked_loss(arch, tmp_path):
    """Over the same examples, packing (bfd) and padding-free batches give the padded batch's token-mean loss."""
    data = rows()
    plain = SFTTrainer(f"tiny:{arch}", config(tmp_path), train_dataset=data)
    packed = SFTTrainer(plain.model, config(tmp_path, packing=True, max_length=96), train_dataset=data,
                        processing_class=plain.processing_class)
    free = SFTTrainer(plain.model, config(tmp_path, padding_free=True), train_dataset=data,
                      processing_class=plain.processing_class)
    examples = list(plain.train_dataset)
    assert len(packed.train_dataset) < len(examples)  # several examples per row
    assert sum(map(len, packed.train_dataset["seq_lengths"])) == len(examples)
    reference = _loss(plain, plain.data_collator(examples))
    assert reference == pytest.approx(_loss(packed, packed.data_collator(list(packed.train_dataset))), abs=1e-5)
    assert reference == pytest.approx(_loss(free, free.data_collator(list(free.train_dataset))), abs=1e-5)
    # Restarting positions matter: the same packed row with positions running on gives another loss.
    leaky = packed.data_collator(list(packed.train_dataset))
    leaky["position_ids"] = torch.arange(leaky["input_ids"].shape[1])[None]
    assert abs(_loss(packed, leaky) - reference) > 1e-4  # 10x the tolerance above (random tiny models)
