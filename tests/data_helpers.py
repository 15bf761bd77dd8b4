"""Helpers shared by the data-layer tests (test_formats, test_tokenize, test_collate)."""

from __future__ import annotations

import pytest

from posttrain.data.formats import FORMATS, DataFormatError, DatasetFormat
from posttrain.data.tokenize import tokenize_preference_row, tokenize_sft_row

ALL = tuple(FORMATS)
SFT = ("language_modeling", "prompt_completion", "conversational")
PREF = ("preference", "implicit_preference")
LM = DatasetFormat("language_modeling", False)
PC = DatasetFormat("prompt_completion", False)
PC_CONV = DatasetFormat("prompt_completion", True)
CONV = DatasetFormat("conversational", True)
EXPLICIT = DatasetFormat("preference", False)
EXPLICIT_CONV = DatasetFormat("preference", True)
IMPLICIT = DatasetFormat("implicit_preference", False)
IMPLICIT_CONV = DatasetFormat("implicit_preference", True)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


GOOD, BAD = [assistant("Wonderful.")], [assistant("Dull.")]


def expect_error(fn, *fragments):
    """``fn()`` raises DataFormatError and its message contains every fragment."""
    with pytest.raises(DataFormatError) as info:
        fn()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message



def chat(tok, messages, generation_prompt=False):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def sft(tok, row, fmt, max_length=None, side="right", train_on_prompt=False, index=0):
    return tokenize_sft_row(row, index, tok, fmt, max_length, side, train_on_prompt)


def pref(tok, row, fmt, max_length=None, max_prompt_length=None, index=0):
    return tokenize_preference_row(row, index, tok, fmt, max_length, max_prompt_length)
