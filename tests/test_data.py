"""The data layer: format detection and validation, loading, tokenizer checks, tokenization, collation, toy data.

Every bad input must raise ``DataFormatError`` naming the row, the column and the fix; every tokenized
row and batch is checked id by id against the tokenizer, so a shifted mask or label shows up here.
"""

from __future__ import annotations

import json

import datasets
import pytest
import torch

from posttrain.data import toy
from posttrain.data.collate import IGNORE_INDEX, PreferenceCollator, SFTCollator
from posttrain.data.formats import FORMATS, DataFormatError, DatasetFormat, detect_format, load_rows, validate
from posttrain.data.tokenize import (check_tokenizer, extract_prompt, tokenize_preference_row, tokenize_sft_row,
                                     truncate)
from posttrain.models.tiny import build_tokenizer

ALL = tuple(FORMATS)
SFT = ("language_modeling", "prompt_completion", "conversational")
PREF = ("preference", "implicit_preference")


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def expect_error(fn, *fragments):
    """``fn()`` raises DataFormatError and its message contains every fragment."""
    with pytest.raises(DataFormatError) as info:
        fn()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def enc(tok):
    return lambda text: tok(text, add_special_tokens=False)["input_ids"]


def chat(tok, messages, generation_prompt=False):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


# ---------------------------------------------------------------------------------------------------
# 1. Format detection and validation
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("columns, expected", [
    (["text"], "language_modeling"),
    (["prompt", "completion"], "prompt_completion"),
    (["messages"], "conversational"),
    (["prompt", "chosen", "rejected"], "preference"),
    (["prompt", "chosen", "rejected", "margin"], "preference"),
    (["chosen", "rejected"], "implicit_preference"),
    (["rejected", "chosen", "margin"], "implicit_preference"),
    (["prompt", "completion", "label"], "unpaired_preference"),
    (["prompt"], "prompt_only"),
])
def test_detect_format(columns, expected):
    assert detect_format(columns) == expected


def test_detect_format_unrecognised_columns_lists_known_formats():
    expect_error(lambda: detect_format(["question", "answer"]),
                 "Cannot recognise a dataset with columns ['answer', 'question']",
                 "language_modeling: ['text']", "prompt_completion: ['prompt', 'completion']",
                 "preference: ['prompt', 'chosen', 'rejected']", "unpaired_preference: ['prompt', 'completion', 'label']")


CONV_PROMPT = [system("Be brief."), user("How was the film?")]
GOOD, BAD = [assistant("Wonderful.")], [assistant("Dull.")]

VALID_ROWS = [
    ("language_modeling", False, [{"text": "The film was great."}]),
    ("prompt_completion", False, [{"prompt": "The film", "completion": " was great."}]),
    ("prompt_completion", True, [{"prompt": CONV_PROMPT, "completion": GOOD}]),
    ("conversational", True, [{"messages": CONV_PROMPT + GOOD}]),
    ("preference", False, [{"prompt": "The film", "chosen": " was great.", "rejected": " was dull."}]),
    ("preference", False, [{"prompt": "The film", "chosen": " was great.", "rejected": " was dull.", "margin": 1.5}]),
    ("preference", True, [{"prompt": CONV_PROMPT, "chosen": GOOD, "rejected": BAD}]),
    ("implicit_preference", False, [{"chosen": "The film was great.", "rejected": "The film was dull."}]),
    ("implicit_preference", True, [{"chosen": CONV_PROMPT + GOOD, "rejected": CONV_PROMPT + BAD, "margin": 2}]),
    ("unpaired_preference", False, [{"prompt": "The film", "completion": " was great.", "label": True},
                                    {"prompt": "The film", "completion": " was dull.", "label": False}]),
    ("unpaired_preference", True, [{"prompt": CONV_PROMPT, "completion": GOOD, "label": True}]),
    ("prompt_only", False, [{"prompt": "The film"}]),
    ("prompt_only", True, [{"prompt": CONV_PROMPT}]),
]


@pytest.mark.parametrize("name, conversational, rows", VALID_ROWS,
                         ids=[f"{n}-{'conv' if c else 'plain'}-{i}" for i, (n, c, _) in enumerate(VALID_ROWS)])
def test_validate_accepts_every_format(name, conversational, rows):
    dataset, fmt = validate(load_rows(rows), ALL)
    assert fmt == DatasetFormat(name, conversational)
    assert dataset.to_list() == rows  # nothing dropped, nothing rewritten


def test_validate_picks_the_accepted_format_the_columns_match():
    # prompt+completion+label is unpaired preference, but a trainer that only takes prompt/completion
    # reads it as prompt/completion with an extra column: an error by default, dropped on request.
    rows = [{"prompt": "The film", "completion": " was great.", "label": True}]
    assert validate(load_rows(rows), ALL)[1].name == "unpaired_preference"
    expect_error(lambda: validate(load_rows(rows), SFT),
                 "Unexpected column(s) ['label'] for prompt_completion data", "extra_columns='drop'")
    dataset, fmt = validate(load_rows(rows), SFT, extra_columns="drop")
    assert fmt == DatasetFormat("prompt_completion", False)
    assert dataset.column_names == ["prompt", "completion"]
    # A prompt-only trainer takes the prompts of preference data when told to drop the answers.
    pref = [{"prompt": "The film", "chosen": " was great.", "rejected": " was dull."}]
    dataset, fmt = validate(load_rows(pref), ("prompt_only",), extra_columns="drop")
    assert fmt.name == "prompt_only" and dataset.to_list() == [{"prompt": "The film"}]


def test_validate_rejects_a_format_the_trainer_does_not_accept():
    rows = [{"prompt": "The film", "chosen": " was great.", "rejected": " was dull."}]
    expect_error(lambda: validate(load_rows(rows), SFT, what="SFTTrainer"),
                 "SFTTrainer needs one of: language_modeling ['text']; prompt_completion ['prompt', 'completion']; "
                 "conversational ['messages']",
                 "['prompt', 'chosen', 'rejected'] look like preference")
    expect_error(lambda: validate(load_rows([{"text": "hello"}]), PREF),
                 "this trainer needs one of: preference", "look like language_modeling")


def test_validate_unrecognisable_columns():
    expect_error(lambda: validate(load_rows([{"question": "q", "answer": "a"}]), ALL),
                 "Cannot recognise a dataset with columns ['answer', 'question']")


def test_extra_columns_error_by_default_and_drop():
    rows = [{"text": "The film was great.", "id": 7, "source": "web"}]
    expect_error(lambda: validate(load_rows(rows), SFT),
                 "Unexpected column(s) ['id', 'source'] for language_modeling data (expected ['text'])",
                 "Remove them, or pass extra_columns='drop' (CLI: --extra_columns drop)")
    dataset, fmt = validate(load_rows(rows), SFT, extra_columns="drop")
    assert dataset.column_names == ["text"] and dataset[0] == {"text": "The film was great."}
    assert fmt.name == "language_modeling"


def test_extra_column_message_mentions_optional_margin():
    rows = [{"chosen": "a b", "rejected": "a c", "weight": 1.0}]
    expect_error(lambda: validate(load_rows(rows), PREF),
                 "Unexpected column(s) ['weight'] for implicit_preference data (expected ['chosen', 'rejected'] "
                 "and optionally ['margin'])")


def test_margin_column_is_kept():
    rows = [{"prompt": "p", "chosen": " a", "rejected": " b", "margin": 0.5}]
    dataset, _ = validate(load_rows(rows), PREF, extra_columns="drop")
    assert dataset.column_names == ["prompt", "chosen", "rejected", "margin"]


BAD_ROWS = {
    "empty string": ([{"prompt": "a", "completion": " b"}, {"prompt": "c", "completion": "   "}],
                     ["Row 1, column 'completion' is an empty string", "Fill it in or drop the row"]),
    "empty text": ([{"text": ""}], ["Row 0, column 'text' is an empty string"]),
    "null": ([{"prompt": "a", "completion": " b"}, {"prompt": None, "completion": " d"}],
             ["Row 1, column 'prompt' is missing (null)", "Fill it in or drop the row"]),
    "null margin": ([{"prompt": "p", "chosen": " a", "rejected": " b", "margin": 1.0},
                     {"prompt": "p", "chosen": " a", "rejected": " c", "margin": None}],
                    ["Row 1, column 'margin' is missing (null)"]),
    "int text": ([{"text": 42}, {"text": 7}],
                 ["Row 0, column 'text': expected a string, got int ('42')", "Convert the column to text"]),
    "int completion": ([{"prompt": "a", "completion": 3}],
                       ["Row 0, column 'completion': expected a string, got int"]),
    "int label": ([{"prompt": "a", "completion": " b", "label": 1}],
                  ["Row 0, column 'label': expected true/false", "got 1"]),
    "string label": ([{"prompt": "a", "completion": " b", "label": "good"}],
                     ["Row 0, column 'label': expected true/false", "got 'good'"]),
    "string margin": ([{"prompt": "p", "chosen": " a", "rejected": " b", "margin": "high"}],
                      ["Row 0, column 'margin': expected a number, got 'high'"]),
    "bool margin": ([{"chosen": "x a", "rejected": "x b", "margin": True}],
                    ["Row 0, column 'margin': expected a number, got True"]),
    "identical": ([{"prompt": "p", "chosen": " a", "rejected": " b"}, {"prompt": "p", "chosen": " a", "rejected": " a"}],
                  ["Row 1: 'chosen' and 'rejected' are identical", "Drop the row or fix one of the answers"]),
    "identical implicit conv": ([{"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("a")]}],
                                ["Row 0: 'chosen' and 'rejected' are identical"]),
    "messages missing role": ([{"messages": [{"content": "hi"}]}],
                              ["Row 0, column 'messages', message 0: each message needs 'role' and 'content' keys"]),
    "messages missing content": ([{"messages": [{"role": "user"}]}],
                                 ["Row 0, column 'messages', message 0: each message needs 'role' and 'content'"]),
    # In a Dataset, a key missing from one message is filled with None for it: still "missing".
    "one message missing role": ([{"messages": [user("hi"), {"content": "yo"}]}],
                                 ["Row 0, column 'messages', message 1: each message needs 'role' and 'content'"]),
    "one message missing content": ([{"messages": [user("hi")]}, {"messages": [user("a"), {"role": "assistant"}]}],
                                    ["Row 1, column 'messages', message 1: each message needs 'role' and 'content'"]),
    "unknown role": ([{"messages": [user("hi"), {"role": "bot", "content": "yo"}]}],
                     ["Row 0, column 'messages', message 1: unknown role 'bot'",
                      "use one of ('system', 'user', 'assistant', 'tool')"]),
    "non-string content": ([{"messages": [{"role": "user", "content": 5}]}],
                           ["Row 0, column 'messages', message 0: content must be a string, got int"]),
    "messages is a string": ([{"messages": "user: hi"}],
                             ["Row 0, column 'messages': expected a non-empty list of {'role', 'content'} messages, "
                              "got str"]),
    "messages is a dict": ([{"messages": user("hi")}],
                           ["Row 0, column 'messages': expected a non-empty list", "got dict"]),
    "messages empty": ([{"messages": [user("hi")]}, {"messages": []}],
                       ["Row 1, column 'messages': expected a non-empty list"]),
    "conv completion, plain prompt": ([{"prompt": "hi", "completion": [assistant("yo")]}],
                                      ["Row 0, column 'prompt': row 0 is conversational (message lists) but this is "
                                       "a str; use one style throughout"]),
    "conv answers, plain prompt": ([{"prompt": "hi", "chosen": [assistant("a")], "rejected": [assistant("b")]}],
                                   ["Row 0, column 'prompt': row 0 is conversational"]),
    "conv prompt, plain completion": ([{"prompt": [user("hi")], "completion": "yo"}],
                                      ["Row 0, column 'prompt': expected a string, got list"]),
}


@pytest.mark.parametrize("rows, fragments", list(BAD_ROWS.values()), ids=list(BAD_ROWS))
def test_validate_bad_rows(rows, fragments):
    expect_error(lambda: validate(load_rows(rows), ALL), *fragments)


def test_validate_empty_dataset():
    expect_error(lambda: validate(datasets.Dataset.from_dict({"text": []}), SFT), "The dataset has no rows.")


def test_validate_reports_the_first_bad_row_not_row_zero():
    rows = [{"text": f"review {i}"} for i in range(5)]
    rows[3]["text"] = " "
    expect_error(lambda: validate(load_rows(rows), SFT), "Row 3, column 'text' is an empty string")


# ---------------------------------------------------------------------------------------------------
# 2. Loading
# ---------------------------------------------------------------------------------------------------

PC_ROWS = [{"prompt": "The film", "completion": " was great."}, {"prompt": "The plot", "completion": " was dull."}]
CONV_ROWS = [{"messages": [user("Hi"), assistant("Hello!")]}, {"messages": [system("s"), user("Q"), assistant("A")]}]


def test_load_rows_dataset_is_returned_as_is():
    dataset = datasets.Dataset.from_list(PC_ROWS)
    assert load_rows(dataset) is dataset


def test_load_rows_dataset_dict_split():
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(PC_ROWS),
                               "test": datasets.Dataset.from_list(PC_ROWS[:1])})
    assert load_rows(dd).to_list() == PC_ROWS
    assert load_rows(dd, split="test").to_list() == PC_ROWS[:1]
    expect_error(lambda: load_rows(dd, split="validation"),
                 "The DatasetDict has no split 'validation'; it has ['train', 'test']")


@pytest.mark.parametrize("rows", [PC_ROWS, CONV_ROWS], ids=["plain", "conversational"])
def test_load_rows_list_of_dicts(rows):
    dataset = load_rows(rows)
    assert isinstance(dataset, datasets.Dataset) and dataset.to_list() == rows


def test_load_rows_list_same_columns_in_another_order():
    dataset = load_rows([{"prompt": "a", "completion": " b"}, {"completion": " d", "prompt": "c"}])
    assert dataset.to_list() == [{"prompt": "a", "completion": " b"}, {"prompt": "c", "completion": " d"}]


def _write(tmp_path, rows, ext):
    path = tmp_path / f"rows.{ext}"
    if ext == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif ext == "json":
        path.write_text(json.dumps(rows))
    elif ext == "csv":
        datasets.Dataset.from_list(rows).to_csv(str(path), index=False)
    else:
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


@pytest.mark.parametrize("ext", ["jsonl", "json", "csv", "parquet"])
def test_load_rows_files_plain(tmp_path, ext):
    path = _write(tmp_path, PC_ROWS, ext)
    for source in (path, str(path)):  # PathLike and str
        dataset = load_rows(source)
        assert dataset.to_list() == PC_ROWS  # leading spaces survive every format
    assert validate(dataset, SFT)[1] == DatasetFormat("prompt_completion", False)


@pytest.mark.parametrize("ext", ["jsonl", "json", "parquet"])
def test_load_rows_files_conversational(tmp_path, ext):
    dataset = load_rows(_write(tmp_path, CONV_ROWS, ext))
    assert dataset.to_list() == CONV_ROWS
    assert validate(dataset, SFT)[1] == DatasetFormat("conversational", True)


def test_load_rows_unpaired_preference_csv_keeps_bool_labels(tmp_path):
    rows = [{"prompt": "p", "completion": " good", "label": True}, {"prompt": "p", "completion": " bad", "label": False}]
    dataset = load_rows(_write(tmp_path, rows, "csv"))
    assert dataset.to_list() == rows
    assert validate(dataset, ALL)[1].name == "unpaired_preference"


def test_load_rows_csv_numeric_text_is_reported(tmp_path):
    path = tmp_path / "numbers.csv"
    path.write_text("prompt,completion\nWhat is 6*7?,42\nWhat is 2+2?,4\n")
    expect_error(lambda: validate(load_rows(path), SFT),
                 "Row 0, column 'completion': expected a string, got int ('42')", "Convert the column to text")


def test_load_rows_extension_is_case_insensitive(tmp_path):
    path = tmp_path / "ROWS.JSONL"
    path.write_text("".join(json.dumps(r) + "\n" for r in PC_ROWS))
    assert load_rows(path).to_list() == PC_ROWS


def test_load_rows_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    expect_error(lambda: load_rows(path), f"Dataset file {str(path)!r} does not exist",
                 "Give a .jsonl, .json, .csv or .parquet file", "datasets.load_dataset first")


def test_load_rows_unknown_extension(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("The film was great.\n")
    expect_error(lambda: load_rows(path), f"Cannot read {str(path)!r}: unknown extension .txt",
                 "use .jsonl, .json, .csv or .parquet")


def test_load_rows_no_extension_in_a_dotted_folder(tmp_path):
    folder = tmp_path / "data.v2"
    folder.mkdir()
    path = folder / "rows"
    path.write_text("{}\n")
    expect_error(lambda: load_rows(path), "unknown extension (none)", "use .jsonl, .json, .csv or .parquet")


def test_load_rows_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    expect_error(lambda: load_rows(path), f"Dataset file {str(path)!r} is empty; give at least one row")


def test_load_rows_malformed_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": broken\n')
    expect_error(lambda: load_rows(path), f"Could not read {str(path)!r} as json")


def test_load_rows_empty_list():
    expect_error(lambda: load_rows([]), "The dataset is an empty list; give at least one row.")


def test_load_rows_items_that_are_not_dicts():
    expect_error(lambda: load_rows([{"text": "a"}, "b"]), "Row 1 is a str, not a dict of columns",
                 "give a list of dicts")
    expect_error(lambda: load_rows([("prompt", "completion")]), "Row 0 is a tuple, not a dict of columns")


def test_load_rows_rows_with_differing_columns():
    rows = [{"prompt": "a", "completion": " b"}, {"prompt": "c", "completion": " d"}, {"prompt": "e", "answer": " f"}]
    expect_error(lambda: load_rows(rows), "Row 2 has columns ['answer', 'prompt'] but row 0 has ['completion', 'prompt']",
                 "every row needs the same columns")


def test_load_rows_mixed_conversational_and_plain_rows():
    rows = [{"messages": [user("hi"), assistant("yo")]}, {"messages": [user("a"), assistant("b")]},
            {"messages": "user: hi"}]
    expect_error(lambda: load_rows(rows), "Row 2, column 'messages' is of type str but row 0's is of type list",
                 "use one style throughout: message lists (conversational) or plain strings")
    rows = [{"prompt": "a", "completion": " b"}, {"prompt": [user("a")], "completion": [assistant("b")]}]
    expect_error(lambda: load_rows(rows), "Row 1, column 'prompt' is of type list but row 0's is of type str",
                 "use one style throughout")


def test_load_rows_mixed_value_types():
    expect_error(lambda: load_rows([{"text": "a"}, {"text": None}, {"text": 3}]),
                 "Row 2, column 'text' is of type int but row 0's is of type str", "convert the column to one type")
    rows = [{"prompt": "a", "completion": " b", "label": True}, {"prompt": "a", "completion": " c", "label": 0}]
    expect_error(lambda: load_rows(rows), "Row 1, column 'label' is of type int but row 0's is of type bool")
    # ints and floats mix fine (one float column)
    rows = [{"chosen": "a b", "rejected": "a c", "margin": 1}, {"chosen": "a b", "rejected": "a d", "margin": 0.5}]
    assert load_rows(rows)["margin"] == [1.0, 0.5]


def test_load_rows_unsupported_type():
    expect_error(lambda: load_rows({"text": ["a"]}), "Unsupported dataset type dict",
                 "give a datasets.Dataset, a list of dicts, or a path")


# ---------------------------------------------------------------------------------------------------
# 3. Tokenizer checks
# ---------------------------------------------------------------------------------------------------

def test_check_tokenizer_accepts_the_tiny_tokenizer(tok):
    assert tok.pad_token_id is not None and tok.eos_token_id is not None and tok.pad_token_id != tok.eos_token_id
    check_tokenizer(tok, needs_chat_template=True)  # does not raise


def test_check_tokenizer_without_pad_token():
    tokenizer = build_tokenizer()
    tokenizer.pad_token = None
    expect_error(lambda: check_tokenizer(tokenizer), "The tokenizer has no pad token",
                 "Set tokenizer.pad_token = tokenizer.eos_token")


def test_check_tokenizer_without_eos_token():
    tokenizer = build_tokenizer()
    tokenizer.eos_token = None
    expect_error(lambda: check_tokenizer(tokenizer), "The tokenizer has no eos token", "Set tokenizer.eos_token")


def test_check_tokenizer_without_chat_template():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = None
    check_tokenizer(tokenizer, needs_chat_template=False)  # plain data does not need one
    expect_error(lambda: check_tokenizer(tokenizer, needs_chat_template=True),
                 "The dataset is conversational but the tokenizer has no chat template",
                 "Set tokenizer.chat_template")


# ---------------------------------------------------------------------------------------------------
# 4. SFT tokenization
# ---------------------------------------------------------------------------------------------------

LM = DatasetFormat("language_modeling", False)
PC = DatasetFormat("prompt_completion", False)
PC_CONV = DatasetFormat("prompt_completion", True)
CONV = DatasetFormat("conversational", True)


def sft(tok, row, fmt, max_length=None, side="right", train_on_prompt=False, index=0):
    return tokenize_sft_row(row, index, tok, fmt, max_length, side, train_on_prompt)


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
    row = {"prompt": "I went to see the director's new picture last night and", "completion": " loved it."}
    n_prompt = len(enc(row["prompt"]))
    expect_error(lambda: sft(tok, row, PC, max_length=n_prompt, side="right", index=7),
                 "Row 7: no completion tokens are left to learn from after truncation to max_length="
                 f"{n_prompt} (right side cut)", "Raise max_length")
    # one completion token at the very start is not enough: position 0 is never predicted
    expect_error(lambda: sft(tok, row, PC, max_length=1, side="left", index=2), "Row 2: no completion tokens")
    out = sft(tok, row, PC, max_length=n_prompt + 1, side="right")  # one completion token past position 0: fine
    assert out["completion_mask"] == [0] * n_prompt + [1]


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


EXPLICIT = DatasetFormat("preference", False)
EXPLICIT_CONV = DatasetFormat("preference", True)
IMPLICIT = DatasetFormat("implicit_preference", False)
IMPLICIT_CONV = DatasetFormat("implicit_preference", True)


def pref(tok, row, fmt, max_length=None, max_prompt_length=None, index=0):
    return tokenize_preference_row(row, index, tok, fmt, max_length, max_prompt_length)


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


def test_sft_collator_packing():
    batch = SFTCollator(pad_token_id=0, packing=True)(FEATURES)
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention_mask
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13, 20, 21, 22]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, -100, 12, 13, -100, 21, 22]]
    assert 0 not in batch["input_ids"].tolist()[0]


def test_packed_and_padded_batches_train_on_the_same_tokens(tok):
    rows = toy.prompt_completion(4, seed=1)
    feats = [sft(tok, r, PC) for r in rows]
    padded = SFTCollator(tok.pad_token_id)(feats)
    packed = SFTCollator(tok.pad_token_id, packing=True)(feats)
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
