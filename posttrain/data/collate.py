"""Batch tokenized rows: pad (right), or padding-free (one row, position_ids restart per example).

Labels follow the transformers convention (aligned with input_ids; the loss shifts them). The first
token of every example gets -100, so padded and padding-free batches train on exactly the same
tokens and no example learns to predict the start of the next one.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def pad(sequences: list[list[int]], value: int, side: str = "right", width: int | None = None) -> torch.Tensor:
    """A [len(sequences), width] LongTensor of the sequences padded with ``value`` (width: the longest)."""
    width = width or max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            if side == "right":
                out[i, : len(seq)] = torch.as_tensor(seq)
            else:
                out[i, width - len(seq):] = torch.as_tensor(seq)
    return out


def example_positions(feature: dict) -> list[int]:
    """Position ids restarting at 0 for each example of a row (``seq_lengths`` from packing, else one)."""
    return [p for n in feature.get("seq_lengths") or [len(feature["input_ids"])] for p in range(n)]


def _labels(input_ids: list[int], mask: list[int], positions: list[int]) -> list[int]:
    return [t if m and p else IGNORE_INDEX for t, m, p in zip(input_ids, mask, positions)]


class SFTCollator:
    """Collate ``{"input_ids", "completion_mask"[, "seq_lengths"]}`` rows for causal-LM training.

    ``padding_free=True`` concatenates the batch into one row with ``position_ids`` restarting at 0
    for each example (each packed example too) and no attention mask: transformers then builds a
    block-diagonal causal mask (SDPA, eager) or uses variable-length kernels (flash-attention), so
    examples never see each other and no pad token is computed. Otherwise rows are right-padded
    with an attention mask.
    """

    def __init__(self, pad_token_id: int, padding_free: bool = False, pad_to_multiple_of: int | None = None):
        self.pad_token_id, self.padding_free, self.pad_to_multiple_of = pad_token_id, padding_free, pad_to_multiple_of

    def _width(self, longest: int) -> int:
        m = self.pad_to_multiple_of
        return -(-longest // m) * m if m else longest

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids = [f["input_ids"] for f in features]
        positions = [example_positions(f) for f in features]
        labels = [_labels(f["input_ids"], f["completion_mask"], p) for f, p in zip(features, positions)]
        # Rows packed with several examples are always padding-free: an attention mask would join them.
        if self.padding_free or any(len(f.get("seq_lengths") or ()) > 1 for f in features):
            ids, labels, positions = [sum(ids, [])], [sum(labels, [])], [sum(positions, [])]
            width = self._width(len(ids[0]))
            return {"input_ids": pad(ids, self.pad_token_id, width=width),
                    "labels": pad(labels, IGNORE_INDEX, width=width), "position_ids": pad(positions, 0, width=width)}
        width = self._width(max(map(len, ids)))
        lengths = torch.tensor([len(s) for s in ids])
        return {"input_ids": pad(ids, self.pad_token_id, width=width),
                "attention_mask": (torch.arange(width) < lengths[:, None]).long(),
                "labels": pad(labels, IGNORE_INDEX, width=width)}


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
