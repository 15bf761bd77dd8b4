"""Pack tokenized SFT rows into rows of at most ``max_length`` tokens (TRL 1.16's ``pack_dataset``).

Strategies, with TRL's names and results (same rows in the same order, so a TRL user gets the same
number of examples per step):

- ``bfd``: best-fit decreasing. Examples are sorted longest first and each goes into the open row
  with the least room that still fits it (a new row if none). An example longer than ``max_length``
  keeps its first ``max_length`` tokens. Each packed row records ``seq_lengths``, so the collator
  restarts ``position_ids`` per example and no token attends across examples.
- ``bfd_split``: the same, but the overflow of a long example becomes further examples of at most
  ``max_length`` tokens (no token is dropped; each piece attends only to itself).
- ``wrapped``: concatenate everything and cut every ``max_length`` tokens, mid-example. Rows are
  full, but tokens attend across example boundaries (pretraining-style).

Like TRL (``datasets.map(batched=True)``), rows are packed in blocks of 1,000 examples.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import defaultdict, deque

import datasets

PACKING_STRATEGIES = ("bfd", "bfd_split", "wrapped")
BLOCK = 1000  # examples per packing block: datasets.map's default batch size, as in TRL


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins (lists of indices into ``lengths``) of total length <= ``capacity``, in creation order.

    Longest first (ties in input order); each length goes to the open bin whose free space is the
    smallest that fits it, the earliest-filled such bin first; a new bin when none fits.
    """
    if any(n > capacity or n <= 0 for n in lengths):
        raise ValueError(f"Every length must be in 1..{capacity}; truncate or split longer examples first.")
    free_spaces: list[int] = []  # sorted distinct free spaces that some open bin has
    bins_with_space: dict[int, deque] = defaultdict(deque)
    bins: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        k = bisect_left(free_spaces, lengths[i])
        if k < len(free_spaces):
            space = free_spaces[k]
            chosen = bins_with_space[space].popleft()
            if not bins_with_space[space]:
                free_spaces.pop(k)
        else:
            space, chosen = capacity, []
            bins.append(chosen)
        chosen.append(i)
        left = space - lengths[i]
        if left > 0:
            if not bins_with_space[left]:
                insort(free_spaces, left)
            bins_with_space[left].append(chosen)
    return bins


def _pieces(ids: list[int], mask: list[int], max_length: int, strategy: str):
    """The (ids, mask) examples one tokenized row contributes to bin packing."""
    if strategy == "bfd":
        return [(ids[:max_length], mask[:max_length])]
    return [(ids[s: s + max_length], mask[s: s + max_length]) for s in range(0, len(ids), max_length)]


def _pack_block(block: dict, max_length: int, strategy: str) -> dict:
    if strategy == "wrapped":
        ids, mask = sum(block["input_ids"], []), sum(block["completion_mask"], [])
        starts = range(0, len(ids), max_length)
        return {"input_ids": [ids[s: s + max_length] for s in starts],
                "completion_mask": [mask[s: s + max_length] for s in starts]}
    pieces = [p for ids, mask in zip(block["input_ids"], block["completion_mask"]) if ids
              for p in _pieces(ids, mask, max_length, strategy)]
    bins = best_fit_decreasing([len(ids) for ids, _ in pieces], max_length)
    return {"input_ids": [sum((pieces[i][0] for i in b), []) for b in bins],
            "completion_mask": [sum((pieces[i][1] for i in b), []) for b in bins],
            "seq_lengths": [[len(pieces[i][0]) for i in b] for b in bins]}


def pack_dataset(dataset: datasets.Dataset, max_length: int | None, strategy: str = "bfd",
                 num_proc: int | None = None) -> datasets.Dataset:
    """Rows ``{"input_ids", "completion_mask"}`` packed into rows of at most ``max_length`` tokens;
    ``bfd`` and ``bfd_split`` rows also get ``seq_lengths`` (the length of each example in the row)."""
    if strategy not in PACKING_STRATEGIES:
        raise ValueError(f"packing_strategy must be one of {PACKING_STRATEGIES}, got {strategy!r}.")
    if max_length is None:
        raise ValueError("packing=True needs max_length (the length of a packed row); set max_length, e.g. 1024.")
    return dataset.map(_pack_block, batched=True, batch_size=BLOCK, remove_columns=dataset.column_names,
                       fn_kwargs={"max_length": max_length, "strategy": strategy}, num_proc=num_proc, desc=f"Packing ({strategy})")
