"""Batch tokenized rows: pad (right), or pack padding-free (one row, position_ids restart per example).

Labels follow the transformers convention (aligned with input_ids; the loss shifts them). The first
token of every example gets -100, so packed and padded batches train on exactly the same tokens and
no example learns to predict the start of the next one.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def pad(sequences: list[list[int]], value: int, side: str = "right") -> torch.Tensor:
    """A [len(sequences), longest] LongTensor of the sequences padded with ``value``."""
    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            if side == "right":
                out[i, : len(seq)] = torch.as_tensor(seq)
            else:
                out[i, width - len(seq):] = torch.as_tensor(seq)
    return out


def _labels(input_ids: list[int], mask: list[int]) -> list[int]:
    labels = [t if m else IGNORE_INDEX for t, m in zip(input_ids, mask)]
    labels[0] = IGNORE_INDEX
    return labels


class SFTCollator:
    """Collate ``{"input_ids", "completion_mask"}`` rows for causal-LM training.

    ``packing=True`` concatenates the batch into one row with ``position_ids`` restarting at 0 for
    each example and no attention mask: transformers then builds a block-diagonal causal mask (SDPA,
    eager) or uses variable-length kernels (flash-attention), so examples never see each other and
    no pad token is computed.
    """

    def __init__(self, pad_token_id: int, packing: bool = False, pad_to_multiple_of: int | None = None):
        self.pad_token_id, self.packing, self.pad_to_multiple_of = pad_token_id, packing, pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids = [f["input_ids"] for f in features]
        labels = [_labels(f["input_ids"], f["completion_mask"]) for f in features]
        if self.packing:
            return {
                "input_ids": torch.tensor([sum(ids, [])]),
                "labels": torch.tensor([sum(labels, [])]),
                "position_ids": torch.tensor([[p for seq in ids for p in range(len(seq))]]),
            }
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = -(-max(map(len, ids)) // m) * m
            ids, labels = [s + [self.pad_token_id] * (width - len(s)) for s in ids], [
                s + [IGNORE_INDEX] * (width - len(s)) for s in labels]
            lengths = [len(f["input_ids"]) for f in features]
        else:
            lengths = [len(s) for s in ids]
        input_ids = pad(ids, self.pad_token_id)
        # As wide as input_ids: with pad_to_multiple_of the padded width exceeds the longest example.
        attention_mask = (torch.arange(input_ids.shape[1]) < torch.tensor(lengths)[:, None]).long()
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": pad(labels, IGNORE_INDEX)}


class PreferenceCollator:
    """Collate ``{"prompt_ids", "chosen_ids", "rejected_ids"[, "margin"]}`` rows into one batch of
    2B sequences -- the B chosen ones, then the B rejected ones -- so a single forward pass scores both.

    ``completion_mask`` marks the answer tokens (what DPO-style losses sum over).
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        seqs, masks = [], []
        for key in ("chosen_ids", "rejected_ids"):
            for f in features:
                seqs.append(f["prompt_ids"] + f[key])
                masks.append([0] * len(f["prompt_ids"]) + [1] * len(f[key]))
        batch = {
            "input_ids": pad(seqs, self.pad_token_id),
            "attention_mask": pad([[1] * len(s) for s in seqs], 0),
            "completion_mask": pad(masks, 0),
        }
        return batch | pair_extras(features)


PAIR_EXTRAS = ("margin", "ref_chosen_logps", "ref_rejected_logps")


def pair_extras(features: list[dict]) -> dict[str, torch.Tensor]:
    """Per-pair floats carried next to the ids: a reward margin, precomputed reference log-probs."""
    return {k: torch.tensor([float(f[k]) for f in features]) for k in PAIR_EXTRAS if k in features[0]}


class SharedPrefixCollator:
    """One row per pair, ``prompt + chosen + rejected``, so the prompt is computed once.

    ``segment_ids`` (0 prompt, 1 chosen, 2 rejected, -1 pad) let the loss build a mask in which each
    answer sees only the prompt and itself; ``position_ids`` restart the rejected answer where the
    prompt ends, so both answers are computed exactly as in their own ``prompt + answer`` sequences.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        seqs, segments, positions = [], [], []
        for f in features:
            p, c, r = len(f["prompt_ids"]), len(f["chosen_ids"]), len(f["rejected_ids"])
            seqs.append(f["prompt_ids"] + f["chosen_ids"] + f["rejected_ids"])
            segments.append([0] * p + [1] * c + [2] * r)
            positions.append(list(range(p + c)) + list(range(p, p + r)))
        return {
            "input_ids": pad(seqs, self.pad_token_id),
            "segment_ids": pad(segments, -1),
            "position_ids": pad(positions, 0),
            "prompt_lengths": torch.tensor([len(f["prompt_ids"]) for f in features]),
            "first_rejected": torch.tensor([len(f["prompt_ids"]) + len(f["chosen_ids"]) for f in features]),
        } | pair_extras(features)


class UnpairedCollator:
    """KTO batches of ``{"prompt_ids", "completion_ids", "label"}`` rows: the B matched sequences, then
    B mismatched ones (prompt i with completion i-1, the rotation TRL 1.16 uses) from which KTO estimates
    its KL reference point."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        n = len(features)
        pairs = [(f["prompt_ids"], f["completion_ids"]) for f in features]
        pairs += [(features[i]["prompt_ids"], features[i - 1]["completion_ids"]) for i in range(n)]
        seqs = [p + c for p, c in pairs]
        return {
            "input_ids": pad(seqs, self.pad_token_id),
            "attention_mask": pad([[1] * len(s) for s in seqs], 0),
            "completion_mask": pad([[0] * len(p) + [1] * len(c) for p, c in pairs], 0),
            "label": torch.tensor([bool(f["label"]) for f in features]),
        }
