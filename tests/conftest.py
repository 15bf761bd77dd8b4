import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    from posttrain.models.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def tok():
    from posttrain.models.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def enc(tok):
    """Token ids of a text without special tokens."""
    return lambda text: tok(text, add_special_tokens=False)["input_ids"]
