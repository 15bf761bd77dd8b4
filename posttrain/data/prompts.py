"""The prompt datasets of the online trainers: prompts (text or chat messages) tokenized once, cut to
``max_prompt_length`` (counted, never silently), and the other columns kept for the reward functions."""

from __future__ import annotations

import logging
from typing import NamedTuple

from .formats import DataFormatError, load_rows, validate
from .tokenize import tokenize_prompt

logger = logging.getLogger(__name__)


class Prompts(NamedTuple):
    values: list  # the dataset's prompt values (text or chat messages)
    ids: list[list[int]]  # tokenized, cut to max_prompt_length
    truncated: list[bool]
    columns: dict  # other dataset columns, for the rewards


def load_prompts(rows, tokenizer, max_prompt_length: int | None, what: str) -> Prompts:
    dataset = load_rows(rows)
    if "prompt" not in dataset.column_names:
        raise DataFormatError(f"{what} needs a 'prompt' column (text or chat messages); the dataset has "
                              f"{dataset.column_names}. Other columns are passed to the reward functions.")
    validate(dataset.select_columns(["prompt"]), ("prompt_only",), what=what)
    values = dataset["prompt"]
    full = [tokenize_prompt(tokenizer, p) for p in values]
    ids = [x[-max_prompt_length:] if max_prompt_length else x for x in full]
    truncated = [len(a) < len(b) for a, b in zip(ids, full)]
    if any(truncated):
        logger.warning("%s: %d of %d prompts are longer than max_prompt_length=%s and keep only their last tokens.",
                       what, sum(truncated), len(values), max_prompt_length)
    return Prompts(values, ids, truncated, {c: dataset[c] for c in dataset.column_names if c != "prompt"})
