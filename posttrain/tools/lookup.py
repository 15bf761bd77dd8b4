"""A document lookup tool: ``lookup("capital of France")`` returns the best-matching document.

Scoring is a tf-idf-lite word overlap: text is lowercased and split into words (runs of letters and
digits); a document's score is the sum, over the *distinct* query words it contains, of that word's
inverse document frequency ``idf(w) = log(1 + N / df(w))`` (``N`` documents, ``df(w)`` of them contain
``w``), so rare words count for more than common ones. Title and text are both searched. The
highest score wins; ties go to the document that came first. A score of 0 (no shared word) gives
``"No document matches '<query>'"``; an empty or blank query gives ``"Error: empty query"``.

The result is ``"<title>: <text>"`` (just the text for untitled documents), cut to ``max_chars``
characters with a trailing ``"..."``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter

_WORD = re.compile(r"[^\W_]+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


class DocumentLookup:
    """Find the document that best matches a query among a fixed collection.

    Args:
        documents: ``{title: text}``, or a list of texts (untitled: only the text is returned).
        max_chars: the returned text is cut to at most this many characters.
    """

    __name__ = "lookup"

    def __init__(self, documents: dict[str, str] | list[str], max_chars: int = 500):
        if isinstance(documents, dict):
            items = [(str(title), text) for title, text in documents.items()]
        elif isinstance(documents, (list, tuple)):
            items = [("", text) for text in documents]
        else:
            raise TypeError(f"documents must be a dict {{title: text}} or a list of texts, got "
                            f"{type(documents).__name__}")
        for title, text in items:
            if not isinstance(text, str):
                where = f"document {title!r}" if title else "a document"
                raise TypeError(f"{where} has text of type {type(text).__name__}; every text must be a str")
        if not items:
            raise ValueError("DocumentLookup needs at least one document")
        if max_chars < 4:
            raise ValueError(f"max_chars must be at least 4, got {max_chars!r}")
        self.documents = items
        self.max_chars = int(max_chars)
        self._words = [_words(f"{title} {text}") for title, text in items]
        df = Counter(word for words in self._words for word in words)
        self._idf = {word: math.log(1 + len(items) / count) for word, count in df.items()}

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike, max_chars: int = 500) -> DocumentLookup:
        """Load documents from a .jsonl file with one ``{"title": ..., "text": ...}`` object per line."""
        documents: dict[str, str] = {}
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise ValueError(f'{path}, line {number}: expected an object with a string "text" '
                                     f'(and a "title"), got {line.strip()[:80]!r}')
                title = str(row.get("title") or f"Document {number}")
                if title in documents:
                    raise ValueError(f"{path}, line {number}: duplicate title {title!r}; titles must be unique")
                documents[title] = row["text"]
        if not documents:
            raise ValueError(f"{path} has no documents; write one JSON object per line")
        return cls(documents, max_chars=max_chars)

    def __len__(self) -> int:
        return len(self.documents)

    def __repr__(self) -> str:
        return f"DocumentLookup({len(self)} documents, max_chars={self.max_chars})"

    def score(self, query: str) -> list[float]:
        """The score of every document for ``query`` (sum of idf over shared distinct words)."""
        query_words = _words(query)
        return [sum(self._idf[w] for w in query_words & words) for words in self._words]

    def __call__(self, query: str) -> str:
        """Search the documents and return the one that best matches the query words."""
        if not isinstance(query, str):
            return f"Error: expected the query as a string, got {type(query).__name__}"
        if not query.strip():
            return "Error: empty query"
        scores = self.score(query)
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        if scores[best] <= 0:
            return f"No document matches '{query.strip()}'"
        title, text = self.documents[best]
        result = f"{title}: {text}" if title else text
        if len(result) > self.max_chars:
            result = result[: self.max_chars - 3] + "..."
        return result
