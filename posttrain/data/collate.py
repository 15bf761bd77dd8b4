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
        if "margin" in features[0]:
            batch["margin"] = torch.tensor([float(f["margin"]) for f in features])
        return batch
