"""Built-in reward functions: sentiment (VADER), toxicity (a trained offensive-language classifier), length,
regex, arithmetic.

Each follows the contract in :mod:`posttrain.rewards.base`: called with keywords
(``fn(prompts=..., completions=..., completion_ids=..., **columns)``, TRL-style), it returns one
float (or None) per completion. Completions may be plain strings or TRL's conversational message
lists (``[{"role": "assistant", "content": text}]``); the text scored is :func:`completion_text`'s.
"""

from __future__ import annotations

import re

from .base import completion_text

_ANALYZER = None  # VADER's analyzer loads a lexicon from disk: build it once, on first use


def _analyzer():
    global _ANALYZER
    if _ANALYZER is None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as err:
            raise ImportError("The 'sentiment' reward needs the vaderSentiment package: "
                              "pip install vaderSentiment==3.3.2") from err
        _ANALYZER = SentimentIntensityAnalyzer()
    return _ANALYZER


def sentiment(prompts, completions, **kwargs) -> list[float]:
    """VADER compound sentiment of each completion, in [-1, 1] (positive text scores > 0)."""
    analyzer = _analyzer()
    return [float(analyzer.polarity_scores(completion_text(c))["compound"]) for c in completions]


def _toxicity_model():
    try:
        from profanity_check import predict_prob
    except ImportError as err:
        raise ImportError("The 'toxicity' and 'non_toxic' rewards need the alt-profanity-check classifier (a linear "
                          "SVM trained on about 200k human-labelled comments; its weights ship in the package): "
                          "pip install 'posttrain[toxicity]'") from err
    return predict_prob


def toxicity(prompts, completions, **kwargs) -> list[float]:
    """Probability that the completion is offensive, in [0, 1] (alt-profanity-check's classifier)."""
    predict = _toxicity_model()
    texts = [completion_text(c) for c in completions]
    return [float(p) for p in predict(texts)] if texts else []


def non_toxic(prompts, completions, **kwargs) -> list[float]:
    """``1 - toxicity``: the reward for detoxification."""
    return [1.0 - p for p in toxicity(prompts, completions)]


class length:
    """``length(target)``: ``max(0, 1 - |n_tokens - target| / target)`` with n_tokens from the
    ``completion_ids`` column (so 1.0 at exactly ``target`` tokens, 0 at 0 or 2x ``target``)."""

    __name__ = "length"

    def __init__(self, target: int):
        if isinstance(target, bool) or not isinstance(target, int) or target <= 0:
            raise ValueError(f"length(target): target must be a positive number of tokens, got {target!r}.")
        self.target = target

    def __repr__(self) -> str:
        return f"length({self.target})"

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        if completion_ids is None:
            raise ValueError("The 'length' reward counts tokens in the 'completion_ids' column, which was not "
                             "given; pass completion_ids=[[token ids], ...] (the online trainers do).")
        t = self.target
        return [max(0.0, 1.0 - abs(len(ids) - t) / t) for ids in completion_ids]


class regex:
    """``regex(pattern)``: 1.0 if ``re.search(pattern, completion)`` matches, else 0.0."""

    __name__ = "regex"

    def __init__(self, pattern: str, flags: int = 0):
        try:
            self.pattern = re.compile(pattern, flags)
        except re.error as err:
            raise ValueError(f"regex reward: invalid pattern {pattern!r}: {err}") from err

    def __repr__(self) -> str:
        return f"regex({self.pattern.pattern!r})"

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return [1.0 if self.pattern.search(completion_text(c)) else 0.0 for c in completions]


_INTEGER = re.compile(r"-?\d+")


def _parse_answer(value, index: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"arithmetic reward: sample {index}'s 'answer' is a bool ({value}); give an integer.")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"arithmetic reward: sample {index}'s 'answer' {value!r} is not an integer.") from None


def arithmetic(prompts, completions, answer=None, **kwargs) -> list[float | None]:
    """Exact match: 1.0 if the first integer in the completion (a leading '-' counts) equals the
    ``answer`` column (an int or a string), else 0.0; a completion without a number scores 0.
    Samples whose answer is None get None (the function does not apply)."""
    return _first_integer_matches([completion_text(c) for c in completions], answer, "arithmetic")


def final_answer(prompts, completions, answer=None, **kwargs) -> list[float | None]:
    """``arithmetic`` on the model's own answer after its last tool result (the text after the last
    ``</result>``; the whole completion when it called no tool), so copying the tool's output into the
    call does not count: the answer must follow the result. For a message-list completion that is
    the last assistant message (tool results are their own messages before it)."""
    texts = [completion_text(c) for c in completions]
    answers = [t[t.rfind("</result>") + len("</result>"):] if "</result>" in t else t for t in texts]
    return _first_integer_matches(answers, answer, "final_answer")


def _first_integer_matches(texts, answer, name: str) -> list[float | None]:
    if answer is None:
        raise ValueError(f"The {name!r} reward compares completions with an 'answer' column, and the dataset "
                         "has none. Add an 'answer' column holding each prompt's integer result "
                         "(e.g. posttrain.data.toy.arithmetic_problems).")
    out = []
    for i, (text, expected) in enumerate(zip(texts, answer)):
        if expected is None:
            out.append(None)
            continue
        target = _parse_answer(expected, i)
        found = _INTEGER.search(text)
        out.append(1.0 if found is not None and int(found.group()) == target else 0.0)
    return out


# name -> one-line help (the CLI prints this table)
BUILTIN_REWARDS = {
    "sentiment": "VADER compound sentiment of the completion, in [-1, 1] (needs vaderSentiment).",
    "toxicity": "probability the completion is offensive, in [0, 1] (alt-profanity-check; posttrain[toxicity]).",
    "non_toxic": "1 - toxicity: the detoxification reward (posttrain[toxicity]).",
    "length": "length:N -- 1 - |completion tokens - N| / N, clipped at 0.",
    "regex": "regex:PATTERN -- 1 if the completion matches PATTERN (re.search), else 0.",
    "arithmetic": "1 if the first integer in the completion equals the 'answer' column, else 0.",
    "final_answer": "like arithmetic, on the text after the last tool result (</result>).",
}


def make_builtin(name: str, arg: str | None):
    """The built-in reward ``name`` built with ``arg`` (the text after ':'), or None if ``name`` is not one."""
    if name not in BUILTIN_REWARDS:
        return None
    plain = {"sentiment": sentiment, "arithmetic": arithmetic, "final_answer": final_answer, "toxicity": toxicity,
             "non_toxic": non_toxic}
    if name in plain:
        if arg is not None:
            raise ValueError(f"The {name!r} reward takes no argument; use {name!r}, not {name + ':' + arg!r}.")
        return plain[name]
    if not arg:
        raise ValueError(f"The {name!r} reward needs an argument: {BUILTIN_REWARDS[name].split(' -- ')[0]}.")
    if name == "length":
        try:
            target = int(arg)
        except ValueError:
            raise ValueError(f"length:N needs an integer number of tokens, got {arg!r}.") from None
        return length(target)
    return regex(arg)
