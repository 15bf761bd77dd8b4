"""Recognise and validate dataset formats; load rows from a Dataset, a list of dicts, a file, a
dataset directory or a hub name (the one place datasets are loaded).

Every error names the row, the column and the fix, so a bad row never becomes a crash deep in
torch or a silently wrong batch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import datasets

from ..errors import PostTrainError

logger = logging.getLogger(__name__)

# format -> (required columns, optional columns). Message-list values are "conversational".
FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "language_modeling": (("text",), ()),
    "prompt_completion": (("prompt", "completion"), ()),
    "conversational": (("messages",), ()),
    "preference": (("prompt", "chosen", "rejected"), ("margin",)),
    "implicit_preference": (("chosen", "rejected"), ("margin",)),
    "unpaired_preference": (("prompt", "completion", "label"), ()),
    "prompt_only": (("prompt",), ()),
}
# Most specific first: a row with prompt+completion+label is unpaired preference, not prompt/completion.
_DETECTION_ORDER = ("preference", "unpaired_preference", "implicit_preference", "prompt_completion",
                    "conversational", "language_modeling", "prompt_only")
ROLES = ("system", "user", "assistant", "tool")


class DataFormatError(PostTrainError, ValueError):
    """A dataset row or column is not what the trainer needs; the message says how to fix it."""


@dataclass(frozen=True)
class DatasetFormat:
    name: str
    conversational: bool


def load_rows(source, split: str = "train", name: str | None = None) -> datasets.Dataset:
    """A ``datasets.Dataset`` from a Dataset, a DatasetDict (``split``), a list of dicts, or anything
    :func:`load_splits` reads (a file, a directory, a hub name), its ``split``. ``name``: the dataset
    configuration (hub and folder datasets)."""
    if isinstance(source, datasets.Dataset):
        return source
    if isinstance(source, list):
        return _from_list(source)
    if isinstance(source, (datasets.DatasetDict, str, os.PathLike)):
        splits = source if isinstance(source, datasets.DatasetDict) else load_splits(source, name)
        if split not in splits:
            what = "The DatasetDict" if isinstance(source, datasets.DatasetDict) else f"Dataset {os.fspath(source)!r}"
            raise DataFormatError(f"{what} has no split {split!r}; it has {list(splits)}. Pick one of them "
                                  "(CLI: --dataset_train_split / --dataset_test_split).")
        return splits[split]
    raise DataFormatError(f"Unsupported dataset type {type(source).__name__}; give a datasets.Dataset, "
                          "a list of dicts, or a path to a .jsonl/.json/.csv/.parquet file or a dataset directory.")


_BUILDERS = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}


def load_splits(source, name: str | None = None) -> datasets.DatasetDict:
    """Every split of a dataset given by path or name, as TRL's scripts find it with
    ``datasets.load_dataset(dataset_name, name=dataset_config)`` (a Dataset or list of rows: one
    ``train`` split):

    - a .jsonl/.json/.csv/.parquet file: one ``train`` split;
    - a directory saved with ``save_to_disk`` (a Dataset: one ``train`` split; a DatasetDict: its splits);
    - a directory of such files: split by file name (``train.jsonl``, ``test.jsonl``, ...) as
      ``datasets.load_dataset(directory)`` splits them;
    - otherwise a hub dataset name, when the hub is reachable.
    """
    if isinstance(source, datasets.DatasetDict):
        return source
    if isinstance(source, (datasets.Dataset, list)):
        return datasets.DatasetDict({"train": load_rows(source)})
    if not isinstance(source, (str, os.PathLike)):
        load_rows(source)  # raises the unsupported-type error
    path = os.fspath(source)
    if os.path.isdir(path):
        return _load_directory(path, name)
    if os.path.isfile(path):
        if name:
            raise DataFormatError(f"dataset_config={name!r} names a configuration of a hub or folder dataset, but "
                                  f"{path!r} is a single file, which has none. Drop --dataset_config.")
        return datasets.DatasetDict({"train": _load_file(path)})
    if _looks_like_a_file(path):
        raise DataFormatError(f"Dataset file {path!r} does not exist. Give a .jsonl, .json, .csv or .parquet "
                              "file, a dataset directory, or a hub dataset name.")
    return _load_hub(path, name)


def _looks_like_a_file(path: str) -> bool:
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    return ext in _BUILDERS or os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1


def _load_file(path: str) -> datasets.Dataset:
    if os.path.getsize(path) == 0:
        raise DataFormatError(f"Dataset file {path!r} is empty; give at least one row.")
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    builder = _BUILDERS.get(ext)
    if builder is None:
        raise DataFormatError(f"Cannot read {path!r}: unknown extension {'.' + ext if ext else '(none)'}; "
                              "use .jsonl, .json, .csv or .parquet.")
    if builder != "parquet":
        check_utf8(path)
    try:
        return datasets.load_dataset(builder, data_files=path, split="train")
    except Exception as err:  # the builder's own error is long; say which file and why
        cause = err.__cause__ or err
        raise DataFormatError(f"Could not read {path!r} as {builder}: {type(cause).__name__}: {cause}") from err


def check_utf8(path: str, block: int = 1 << 24) -> None:
    """Raise a DataFormatError naming the file, line and column of the first byte sequence that is not UTF-8
    (pyarrow would fail later, while the rows are read, naming neither). Reads the file once, in blocks."""
    offset, line, line_start, tail = 0, 1, 0, b""  # bytes and lines before ``data``; where the current line starts
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(block)
            data = tail + chunk
            if not data:
                return
            try:
                data.decode("utf-8")
                tail = b""
            except UnicodeDecodeError as err:
                if chunk and err.reason == "unexpected end of data" and err.start >= len(data) - 3:
                    data, tail = data[: err.start], data[err.start:]  # a character cut by the block's end
                else:
                    bad = err.start
                    newline = data.rfind(b"\n", 0, bad)
                    line += data.count(b"\n", 0, bad)
                    start = offset + newline + 1 if newline >= 0 else line_start
                    seen = data[max(newline + 1, bad - 30): bad + 10]
                    raise DataFormatError(
                        f"Dataset file {path!r}, line {line}, column {offset + bad - start + 1}: byte "
                        f"{data[bad]:#04x} is not UTF-8 (near {seen!r}). Save the file as UTF-8 (e.g. `iconv -f "
                        "latin1 -t utf-8`), or fix or drop that line.") from None
            newline = data.rfind(b"\n")
            if newline >= 0:
                line_start = offset + newline + 1
            line += data.count(b"\n")
            offset += len(data)


def _load_directory(path: str, name: str | None) -> datasets.DatasetDict:
    saved = any(os.path.isfile(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))
    try:
        if saved:  # written by save_to_disk
            if name:
                raise DataFormatError(f"dataset_config={name!r}: {path!r} is a dataset saved with save_to_disk, "
                                      "which has no configurations. Drop --dataset_config.")
            loaded = datasets.load_from_disk(path)
            return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
        for folder, _, files in os.walk(path):  # the text files load_dataset will read, checked first
            for file in sorted(files):
                if os.path.splitext(file)[1].lstrip(".").lower() in ("jsonl", "json", "csv"):
                    check_utf8(os.path.join(folder, file))
        return datasets.load_dataset(path, name=name)
    except DataFormatError:
        raise
    except Exception as err:
        raise DataFormatError(f"Could not read the dataset directory {path!r}: {type(err).__name__}: {err}. A "
                              "dataset directory holds a dataset saved with save_to_disk, or .jsonl/.json/.csv/"
                              ".parquet files (split by file name: train.jsonl, test.jsonl, ...).") from err


def _load_hub(name_or_path: str, name: str | None) -> datasets.DatasetDict:
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE
    try:
        return datasets.load_dataset(name_or_path, name=name)
    except Exception as err:
        where = ("the hub is unreachable (HF_HUB_OFFLINE=1)" if offline
                 else f"loading it from the hub failed ({type(err).__name__}: {err})")
        raise DataFormatError(f"Dataset {name_or_path!r} is not a local file or directory, and as a hub dataset "
                              f"name it cannot be loaded: {where}. Give a local .jsonl/.json/.csv/.parquet file or "
                              "a dataset directory (e.g. written by save_to_disk where the hub is reachable)."
                              ) from err


def _from_list(source: list) -> datasets.Dataset:
    if not source:
        raise DataFormatError("The dataset is an empty list; give at least one row.")
    bad = next((i for i, r in enumerate(source) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataFormatError(f"Row {bad} is a {type(source[bad]).__name__}, not a dict of columns; "
                              "give a list of dicts such as {'prompt': ..., 'completion': ...}.")
    keys = list(source[0])
    for i, row in enumerate(source):
        if list(row) != keys and set(row) != set(keys):
            raise DataFormatError(f"Row {i} has columns {sorted(row)} but row 0 has {sorted(keys)}; "
                                  "every row needs the same columns.")
    try:
        return datasets.Dataset.from_list(source)
    except Exception as err:  # pyarrow cannot build a column that mixes types: say which row and column
        raise _mixed_types_error(source, keys, err) from err


def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def _mixed_types_error(rows: list[dict], keys: list, err: Exception) -> DataFormatError:
    for column in keys:
        first = next(((j, r[column]) for j, r in enumerate(rows) if r[column] is not None), None)
        if first is None:
            continue
        j, ref = first
        for i, row in enumerate(rows):
            value = row[column]
            if value is not None and _kind(value) != _kind(ref):
                hint = ("use one style throughout: message lists (conversational) or plain strings"
                        if isinstance(value, list) or isinstance(ref, list) else "convert the column to one type")
                return DataFormatError(f"Row {i}, column {column!r} is of type {type(value).__name__} but row {j}'s "
                                       f"is of type {type(ref).__name__}; {hint}.")
    return DataFormatError(f"Could not build a dataset from the rows ({err}); every row needs the same value "
                           "types in each column, messages included.")


def detect_format(columns) -> str:
    """The format name whose required columns are all present (most specific first)."""
    columns = set(columns)
    for name in _DETECTION_ORDER:
        if set(FORMATS[name][0]) <= columns:
            return name
    known = "; ".join(f"{n}: {list(r)}" for n, (r, _) in FORMATS.items())
    raise DataFormatError(f"Cannot recognise a dataset with columns {sorted(columns)}. Known formats: {known}.")


def _check_messages(value, row: int, column: str) -> None:
    if not isinstance(value, list) or not value:
        raise DataFormatError(f"Row {row}, column {column!r}: expected a non-empty list of "
                              f"{{'role', 'content'}} messages, got {type(value).__name__}.")
    for j, msg in enumerate(value):
        if not isinstance(msg, dict) or msg.get("role") is None or msg.get("content") is None:
            raise DataFormatError(f"Row {row}, column {column!r}, message {j}: each message needs "
                                  "'role' and 'content' keys.")
        if msg["role"] not in ROLES:
            raise DataFormatError(f"Row {row}, column {column!r}, message {j}: unknown role {msg['role']!r}; "
                                  f"use one of {ROLES}.")
        if not isinstance(msg["content"], str):
            raise DataFormatError(f"Row {row}, column {column!r}, message {j}: content must be a string, "
                                  f"got {type(msg['content']).__name__}.")


def _check_value(value, row: int, column: str, conversational: bool, allow_empty: bool) -> None:
    if value is None:
        raise DataFormatError(f"Row {row}, column {column!r} is missing (null). Fill it in or drop the row.")
    if column == "label":
        if not isinstance(value, bool):
            raise DataFormatError(f"Row {row}, column 'label': expected true/false (desirable or not), "
                                  f"got {value!r}.")
        return
    if column == "margin":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataFormatError(f"Row {row}, column 'margin': expected a number, got {value!r}.")
        return
    if conversational:
        _check_messages(value, row, column)
        return
    if not isinstance(value, str):
        raise DataFormatError(f"Row {row}, column {column!r}: expected a string, got "
                              f"{type(value).__name__} ({str(value)[:40]!r}). Convert the column to text.")
    if not allow_empty and not value.strip():
        raise DataFormatError(f"Row {row}, column {column!r} is an empty string. Fill it in or drop the row.")


def validate(dataset: datasets.Dataset, accepted: tuple[str, ...], extra_columns: str = "drop",
             what: str = "this trainer") -> tuple[datasets.Dataset, DatasetFormat]:
    """Check every row of ``dataset`` against the first of ``accepted`` formats it matches.

    ``extra_columns`` is ``"drop"`` (default, as TRL: columns the format does not use are removed, and a
    warning names them) or ``"error"`` (strict: unexpected columns often mean the wrong dataset).
    Returns the (possibly column-pruned) dataset and its format.
    """
    if len(dataset) == 0:
        raise DataFormatError("The dataset has no rows.")
    columns = set(dataset.column_names)
    name = next((n for n in _DETECTION_ORDER if n in accepted and set(FORMATS[n][0]) <= columns), None)
    if name is None:
        name = detect_format(columns)
        wanted = "; ".join(f"{n} {list(FORMATS[n][0])}" for n in accepted)
        raise DataFormatError(f"{what} needs one of: {wanted}. The dataset's columns "
                              f"{dataset.column_names} look like {name}.")
    required, optional = FORMATS[name]
    extra = [c for c in dataset.column_names if c not in required + optional]
    if extra:
        if extra_columns == "drop":
            logger.warning("%s does not use column(s) %s of this %s dataset; dropping them (set extra_columns="
                           "'error' to make this an error).", what[0].upper() + what[1:], extra, name)
            dataset = dataset.remove_columns(extra)
        else:
            raise DataFormatError(f"Unexpected column(s) {extra} for {name} data (expected {list(required)}"
                                  f"{' and optionally ' + str(list(optional)) if optional else ''}). "
                                  "Remove them, or pass extra_columns='drop' (CLI: --extra_columns drop) to drop them.")
    first = dataset[0][required[-1]] if name != "unpaired_preference" else dataset[0]["completion"]
    conversational = isinstance(first, list) or name == "conversational"
    for i, row in enumerate(dataset):
        for column in dataset.column_names:
            value_conversational = conversational and column not in ("label", "margin")
            mixed = value_conversational and name != "conversational"  # "messages" must always be a list
            if mixed and not isinstance(row[column], list) and row[column] is not None:
                raise DataFormatError(f"Row {i}, column {column!r}: row 0 is conversational (message lists) "
                                      f"but this is a {type(row[column]).__name__}; use one style throughout.")
            _check_value(row[column], i, column, value_conversational, allow_empty=False)
        if name in ("preference", "implicit_preference") and row["chosen"] == row["rejected"]:
            raise DataFormatError(f"Row {i}: 'chosen' and 'rejected' are identical, so the pair teaches "
                                  "nothing. Drop the row or fix one of the answers.")
    return dataset, DatasetFormat(name, conversational)
