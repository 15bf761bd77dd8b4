"""The data layer, part 1: format detection and validation, loading, tokenizer checks.

Every bad input must raise ``DataFormatError`` naming the row, the column and the fix.
"""

from __future__ import annotations

import json
import logging

import datasets
import pytest

from data_helpers import ALL, BAD, GOOD, PREF, SFT, assistant, chat, expect_error, pref, system, user
from posttrain.data.formats import DatasetFormat, detect_format, load_rows, load_splits, validate
from posttrain.data.tokenize import check_tokenizer
from posttrain.models.tiny import build_tokenizer


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
    # reads it as prompt/completion with an extra column: dropped by default (as TRL), an error on request.
    rows = [{"prompt": "The film", "completion": " was great.", "label": True}]
    assert validate(load_rows(rows), ALL)[1].name == "unpaired_preference"
    expect_error(lambda: validate(load_rows(rows), SFT, extra_columns="error"),
                 "Unexpected column(s) ['label'] for prompt_completion data", "extra_columns='drop'")
    dataset, fmt = validate(load_rows(rows), SFT)
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


def test_extra_columns_dropped_by_default_with_one_note_and_error_on_request(caplog):
    rows = [{"text": "The film was great.", "id": 7, "source": "web"}, {"text": "Dull.", "id": 8, "source": "web"}]
    with caplog.at_level(logging.WARNING, logger="posttrain.data.formats"):
        dataset, fmt = validate(load_rows(rows), SFT, what="SFTTrainer")
    assert dataset.column_names == ["text"] and dataset[0] == {"text": "The film was great."}
    assert fmt.name == "language_modeling"
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1, notes  # one note per dataset, not one per row
    assert "SFTTrainer does not use column(s) ['id', 'source']" in notes[0] and "extra_columns='error'" in notes[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="posttrain.data.formats"):
        validate(load_rows([{"text": "a"}]), SFT)
    assert not caplog.records  # nothing dropped, nothing said
    expect_error(lambda: validate(load_rows(rows), SFT, extra_columns="error"),
                 "Unexpected column(s) ['id', 'source'] for language_modeling data (expected ['text'])",
                 "Remove them, or pass extra_columns='drop' (CLI: --extra_columns drop)")


def test_extra_column_message_mentions_optional_margin():
    rows = [{"chosen": "a b", "rejected": "a c", "weight": 1.0}]
    expect_error(lambda: validate(load_rows(rows), PREF, extra_columns="error"),
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
                 "Give a .jsonl, .json, .csv or .parquet file, a dataset directory, or a hub dataset name")


@pytest.mark.parametrize("saved", ["dataset", "dataset_dict"])
def test_load_splits_of_a_save_to_disk_directory(tmp_path, saved):
    train, test = datasets.Dataset.from_list(PC_ROWS), datasets.Dataset.from_list(PC_ROWS[:1])
    folder = tmp_path / "saved"
    (train if saved == "dataset" else datasets.DatasetDict({"train": train, "test": test})).save_to_disk(str(folder))
    splits = load_splits(folder)
    assert list(splits) == (["train"] if saved == "dataset" else ["train", "test"])
    assert load_rows(str(folder)).to_list() == PC_ROWS
    if saved == "dataset_dict":
        assert load_rows(folder, split="test").to_list() == PC_ROWS[:1]
    expect_error(lambda: load_rows(folder, split="validation"),
                 f"Dataset {str(folder)!r} has no split 'validation'", "--dataset_train_split")
    expect_error(lambda: load_splits(folder, name="en"), "save_to_disk, which has no configurations")


def test_load_splits_of_a_folder_of_files_split_by_name(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PC_ROWS))
    (folder / "test.jsonl").write_text(json.dumps(PC_ROWS[1]) + "\n")
    splits = load_splits(str(folder))
    assert sorted(splits) == ["test", "train"]
    assert load_rows(folder).to_list() == PC_ROWS and load_rows(folder, "test").to_list() == PC_ROWS[1:]
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_error(lambda: load_rows(empty), f"Could not read the dataset directory {str(empty)!r}",
                 "split by file name")


def test_hub_name_offline_is_a_clear_error(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    expect_error(lambda: load_rows("trl-lib/no-such-dataset-xyz"),
                 "Dataset 'trl-lib/no-such-dataset-xyz' is not a local file or directory",
                 "the hub is unreachable (HF_HUB_OFFLINE=1)", "Give a local .jsonl")
    expect_error(lambda: load_splits(_write(tmp_path, PC_ROWS, "jsonl"), name="en"), "is a single file, which has none")


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
