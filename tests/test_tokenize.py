"""The data layer, part 2: SFT and preference tokenization, checked id by id against the tokenizer,
so a shifted mask shows up here."""

from __future__ import annotations

import pytest

from data_helpers import (BAD, CONV, GOOD, EXPLICIT, EXPLICIT_CONV, IMPLICIT, IMPLICIT_CONV, LM, PC,
                          PC_CONV, SFT, assistant, chat, expect_error, pref, sft, system, user)
from posttrain.data.tokenize import extract_prompt, has_trainable_tokens, truncate


# ---------------------------------------------------------------------------------------------------
# 4. SFT tokenization
# ---------------------------------------------------------------------------------------------------

def test_sft_language_modeling(tok, enc):
    out = sft(tok, {"text": "The film was great fun."}, LM)
    assert out["input_ids"] == enc("The film was great fun.") + [tok.eos_token_id]
    assert out["completion_mask"] == [1] * len(out["input_ids"])


def test_sft_prompt_completion(tok, enc):
    prompt, completion = "I went to see the film and", " it was wonderful."
    out = sft(tok, {"prompt": prompt, "completion": completion}, PC)
    p, c = enc(prompt), enc(completion)
    assert out["input_ids"] == p + c + [tok.eos_token_id]
    assert out["completion_mask"] == [0] * len(p) + [1] * (len(c) + 1)
    # token-in/token-out: the prompt's ids do not depend on what follows it
    other = sft(tok, {"prompt": prompt, "completion": "ly bad"}, PC)
    assert other["input_ids"][:len(p)] == p and other["completion_mask"][:len(p)] == [0] * len(p)


def test_text_already_ending_with_eos_gets_no_second_eos(tok, enc):
    eos_text, eos = tok.eos_token, tok.eos_token_id
    lm = sft(tok, {"text": "The film was great fun." + eos_text}, LM)
    assert lm["input_ids"] == enc("The film was great fun.") + [eos]
    prompt, completion = "I went to see the film and", " it was wonderful."
    pc = sft(tok, {"prompt": prompt, "completion": completion + eos_text}, PC)
    assert pc["input_ids"] == enc(prompt) + enc(completion) + [eos]
    assert pc == sft(tok, {"prompt": prompt, "completion": completion}, PC)
    pair = pref(tok, {"prompt": "The film", "chosen": " was great." + eos_text, "rejected": " was dull."}, EXPLICIT)
    assert pair["chosen_ids"] == enc(" was great.") + [eos] and pair["rejected_ids"] == enc(" was dull.") + [eos]
    # an eos inside the text is data, not an ending: the final eos is still added
    inside = sft(tok, {"prompt": prompt, "completion": eos_text + completion}, PC)
    assert inside["input_ids"] == enc(prompt) + [eos] + enc(completion) + [eos]


def test_sft_prompt_completion_train_on_prompt(tok, enc):
    row = {"prompt": "The film", "completion": " was great."}
    masked, full = sft(tok, row, PC), sft(tok, row, PC, train_on_prompt=True)
    assert full["input_ids"] == masked["input_ids"]
    assert full["completion_mask"] == [1] * len(masked["input_ids"]) != masked["completion_mask"]


MULTI_TURN = [system("Be brief."), user("Hi there"), assistant("Hello!"), user("Bye"), assistant("See you.")]


def test_sft_conversational_assistant_only_mask(tok, enc):
    out = sft(tok, {"messages": MULTI_TURN}, CONV)
    pieces = [
        ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", 0),
        ("Hello!<|im_end|>\n", 1),
        ("<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n", 0),
        ("See you.<|im_end|>\n", 1),
    ]
    assert "".join(text for text, _ in pieces) == chat(tok, MULTI_TURN)
    assert out["input_ids"] == [i for text, _ in pieces for i in enc(text)]
    assert out["completion_mask"] == [m for text, m in pieces for _ in enc(text)]
    trainable = [i for i, m in zip(out["input_ids"], out["completion_mask"]) if m]
    assert tok.decode(trainable) == "Hello!<|im_end|>\nSee you.<|im_end|>\n"
    # every <|im_start|> (the assistant headers included) is masked; no eos is appended (<|im_end|> ends turns)
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert [m for i, m in zip(out["input_ids"], out["completion_mask"]) if i == im_start] == [0] * 5
    assert tok.eos_token_id not in out["input_ids"]


def test_sft_conversational_trailing_user_turn_is_masked(tok, enc):
    out = sft(tok, {"messages": MULTI_TURN[:3] + [user("Thanks")]}, CONV)
    tail = enc("<|im_start|>user\nThanks<|im_end|>\n")
    assert out["input_ids"][-len(tail):] == tail and out["completion_mask"][-len(tail):] == [0] * len(tail)
    assert sum(out["completion_mask"]) == len(enc("Hello!<|im_end|>\n"))


def test_sft_conversational_train_on_prompt(tok):
    masked = sft(tok, {"messages": MULTI_TURN}, CONV)
    full = sft(tok, {"messages": MULTI_TURN}, CONV, train_on_prompt=True)
    assert full["input_ids"] == masked["input_ids"] and full["completion_mask"] == [1] * len(full["input_ids"])
    # trained on every token, the conversation is rendered and tokenized whole, as TRL does
    assert full["input_ids"] == tok.apply_chat_template(MULTI_TURN, tokenize=True, return_dict=True)["input_ids"]


def test_sft_conversation_without_assistant_turn(tok):
    expect_error(lambda: sft(tok, {"messages": [system("s"), user("hi")]}, CONV, index=4),
                 "Row 4: there is nothing to learn from: the conversation has no assistant turn",
                 "assistant_only_loss=False")
    assert sum(sft(tok, {"messages": [user("hi")]}, CONV, train_on_prompt=True)["completion_mask"]) > 0


def test_sft_prompt_completion_conversational(tok, enc):
    prompt, completion = [system("Be brief."), user("How was it?")], [assistant("Great fun.")]
    out = sft(tok, {"prompt": prompt, "completion": completion}, PC_CONV)
    p = enc(chat(tok, prompt, generation_prompt=True))
    c = enc("Great fun.<|im_end|>\n")
    assert out["input_ids"] == p + c
    assert out["completion_mask"] == [0] * len(p) + [1] * len(c)


@pytest.mark.parametrize("side", ["right", "left"])
def test_sft_truncation_sides(tok, side):
    row = {"prompt": "The film", "completion": " was a joy to watch from start to finish."}
    full = sft(tok, row, PC)
    n = len(full["input_ids"])
    out = sft(tok, row, PC, max_length=n - 3, side=side)
    keep = slice(0, n - 3) if side == "right" else slice(3, n)
    assert out["input_ids"] == full["input_ids"][keep] and out["completion_mask"] == full["completion_mask"][keep]
    assert (out["input_ids"][-1] == tok.eos_token_id) == (side == "left")  # right cut drops the eos
    assert sft(tok, row, PC, max_length=n, side=side) == full  # exactly max_length: untouched


def test_truncate_rejects_an_unknown_side():
    with pytest.raises(ValueError, match="truncation_side must be one of"):
        truncate([1, 2, 3], [0, 1, 1], 2, "middle")


def test_sft_all_prompt_after_truncation(tok, enc):
    """A row truncation leaves with nothing trainable is kept here and dropped by the trainer (as TRL does)."""
    row = {"prompt": "I went to see the director's new picture last night and", "completion": " loved it."}
    n_prompt = len(enc(row["prompt"]))
    out = sft(tok, row, PC, max_length=n_prompt, side="right")
    assert out["completion_mask"] == [0] * n_prompt and not has_trainable_tokens(out)
    # one completion token at the very start is not enough: position 0 is never predicted
    assert not has_trainable_tokens(sft(tok, row, PC, max_length=1, side="left"))
    out = sft(tok, row, PC, max_length=n_prompt + 1, side="right")  # one completion token past position 0: fine
    assert out["completion_mask"] == [0] * n_prompt + [1] and has_trainable_tokens(out)


# ---------------------------------------------------------------------------------------------------
# 5. Preference tokenization
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chosen, rejected, expected", [
    ("The film was great fun.", "The film was dull.", ("The film was", " great fun.", " dull.")),
    ("The film was grand", "The film was great", ("The film was", " grand", " great")),  # not mid-word
    ("I loved it", "I hated it", ("I", " loved it", " hated it")),
    ("abc", "abd", ("", "abc", "abd")),  # no word boundary: no prompt
    ("Good", "Good movie", ("", "Good", "Good movie")),  # never an empty answer
    ("Great fun", "Awful", ("", "Great fun", "Awful")),
])
def test_extract_prompt_plain(chosen, rejected, expected):
    prompt, c, r = extract_prompt(chosen, rejected)
    assert (prompt, c, r) == expected
    assert prompt + c == chosen and prompt + r == rejected


def test_extract_prompt_conversational():
    shared = [system("s"), user("Q1"), assistant("A1"), user("Q2")]
    assert extract_prompt(shared + GOOD, shared + BAD) == (shared, GOOD, BAD)
    # the last message always stays in the answers, even when one conversation extends the other
    long = [user("Q"), assistant("A"), user("Q2"), assistant("A2")]
    assert extract_prompt(long[:2], long) == ([user("Q")], [assistant("A")], long[1:])
    assert extract_prompt([user("x")] + GOOD, [user("y")] + BAD) == ([], [user("x")] + GOOD, [user("y")] + BAD)


def test_preference_explicit_plain(tok, enc):
    out = pref(tok, {"prompt": "The film", "chosen": " was great.", "rejected": " was dull."}, EXPLICIT)
    eos = tok.eos_token_id
    assert out == {"prompt_ids": enc("The film"), "chosen_ids": enc(" was great.") + [eos],
                   "rejected_ids": enc(" was dull.") + [eos]}


def test_preference_implicit_plain_equals_explicit(tok, enc):
    implicit = pref(tok, {"chosen": "The film was great fun.", "rejected": "The film was dull."}, IMPLICIT)
    explicit = pref(tok, {"prompt": "The film was", "chosen": " great fun.", "rejected": " dull."}, EXPLICIT)
    assert implicit == explicit
    assert implicit["prompt_ids"] == enc("The film was")


def test_preference_explicit_conversational(tok, enc):
    prompt = [system("Be brief."), user("How was it?")]
    out = pref(tok, {"prompt": prompt, "chosen": GOOD, "rejected": BAD}, EXPLICIT_CONV)
    assert out == {"prompt_ids": enc(chat(tok, prompt, generation_prompt=True)),
                   "chosen_ids": enc("Wonderful.<|im_end|>\n"), "rejected_ids": enc("Dull.<|im_end|>\n")}
    assert tok.eos_token_id not in out["chosen_ids"] + out["rejected_ids"]


def test_preference_implicit_conversational_equals_explicit(tok):
    prompt = [system("Be brief."), user("How was it?")]
    implicit = pref(tok, {"chosen": prompt + GOOD, "rejected": prompt + BAD}, IMPLICIT_CONV)
    explicit = pref(tok, {"prompt": prompt, "chosen": GOOD, "rejected": BAD}, EXPLICIT_CONV)
    assert implicit == explicit


def test_preference_implicit_conversational_without_shared_prefix(tok, enc):
    chosen, rejected = [user("x"), assistant("a")], [user("y"), assistant("b")]
    out = pref(tok, {"chosen": chosen, "rejected": rejected}, IMPLICIT_CONV)
    assert out == {"prompt_ids": [], "chosen_ids": enc(chat(tok, chosen)), "rejected_ids": enc(chat(tok, rejected))}


def test_preference_max_prompt_length_keeps_the_prompt_end(tok, enc):
    row = {"prompt": "I went to see the film last night and", "chosen": " loved it.", "rejected": " hated it."}
    full = pref(tok, row, EXPLICIT)
    assert len(full["prompt_ids"]) > 3
    out = pref(tok, row, EXPLICIT, max_prompt_length=3)
    assert out["prompt_ids"] == full["prompt_ids"][-3:]
    assert out["chosen_ids"] == full["chosen_ids"] and out["rejected_ids"] == full["rejected_ids"]


def test_preference_max_length_keeps_the_answer_start(tok):
    row = {"prompt": "The film", "chosen": " was a joy to watch from start to finish.", "rejected": " was dull."}
    full = pref(tok, row, EXPLICIT)
    n_prompt = len(full["prompt_ids"])
    out = pref(tok, row, EXPLICIT, max_length=n_prompt + 3)
    assert out["prompt_ids"] == full["prompt_ids"]
    assert out["chosen_ids"] == full["chosen_ids"][:3] and out["rejected_ids"] == full["rejected_ids"][:3]
    both = pref(tok, row, EXPLICIT, max_length=4, max_prompt_length=1)  # prompt cut first, then answers fit
    assert both["prompt_ids"] == full["prompt_ids"][-1:] and both["chosen_ids"] == full["chosen_ids"][:3]


def test_preference_prompt_leaves_no_room(tok, enc):
    row = {"prompt": "I went to see the film last night and", "chosen": " loved it.", "rejected": " hated it."}
    n = len(enc(row["prompt"]))
    expect_error(lambda: pref(tok, row, EXPLICIT, max_length=n, index=4),
                 f"Row 4: the prompt alone has {n} tokens, leaving no room for the answers within max_length={n}",
                 "set max_prompt_length")


def test_preference_margin_passthrough(tok):
    row = {"prompt": "The film", "chosen": " was great.", "rejected": " was dull."}
    assert "margin" not in pref(tok, row, EXPLICIT)
    out = pref(tok, {**row, "margin": 2}, EXPLICIT)
    assert out["margin"] == 2.0 and isinstance(out["margin"], float)
    out = pref(tok, {"chosen": "The film was great.", "rejected": "The film was dull.", "margin": -0.5}, IMPLICIT)
    assert out["margin"] == -0.5
