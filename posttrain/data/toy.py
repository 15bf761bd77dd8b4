"""Small, seeded, license-clean datasets written by us, so that tests, benchmarks and the demo run
offline. Movie-review-like sentences of mixed sentiment: an opening, then a continuation whose
sentiment we know, so preference pairs (positive preferred) are separable by construction."""

from __future__ import annotations

import random

SUBJECTS = [
    "the film", "this movie", "the story", "the sequel", "the director's new picture", "the lead actor",
    "the script", "the soundtrack", "the cast", "the ending", "the first hour", "the cinematography",
    "the dialogue", "the remake", "this documentary", "the animation", "the villain", "the plot",
]
OPENINGS = [
    "I went to see {s} last night and", "After all the hype, {s}", "My friends told me {s}",
    "Honestly, {s}", "From the opening scene, {s}", "I did not expect much, but {s}",
    "Watching {s} with my family,", "On a rainy Sunday, {s}", "Critics were divided, yet {s}",
    "Two hours later, I think {s}",
]
POSITIVE = [
    "was wonderful and moving", "felt fresh, funny and warm", "is a delight from start to finish",
    "was beautiful, clever and full of heart", "left me smiling for days", "is brilliant and inspiring",
    "was a joy to watch", "earned every bit of praise", "is charming, bold and great fun",
    "was superb, with a lovely ending", "made me laugh and cheer", "is a gem I will happily watch again",
]
NEGATIVE = [
    "was dull and painfully slow", "felt lazy, boring and cold", "is a mess from start to finish",
    "was ugly, confused and empty", "left me bored and annoyed", "is awful and forgettable",
    "was a chore to sit through", "wasted every good idea it had", "is clumsy, dreary and sad",
    "was terrible, with a stupid ending", "made me groan and sigh", "is a disaster I will never watch again",
]
TAILS_POS = ["Highly recommended.", "Go see it.", "A real treat.", "Loved it.", "Five stars."]
TAILS_NEG = ["Skip it.", "Not worth it.", "What a waste.", "Hated it.", "One star."]


def _review(rng: random.Random, positive: bool) -> tuple[str, str]:
    opening = rng.choice(OPENINGS).format(s=rng.choice(SUBJECTS))
    body = rng.choice(POSITIVE if positive else NEGATIVE)
    tail = rng.choice(TAILS_POS if positive else TAILS_NEG)
    return opening, f" {body}. {tail}"


ASIDES_POS = ["The music is lovely.", "The actors clearly had fun.", "Every scene looks great.",
              "The jokes land.", "The pacing is just right.", "I cared about every character."]
ASIDES_NEG = ["The music is grating.", "The actors look bored.", "Every scene drags on.",
              "The jokes fall flat.", "The pacing is a mess.", "I cared about no one."]


def all_openings() -> list[str]:
    """Every review opening the templates can produce (180), in a fixed order."""
    return [o.format(s=s) for o in OPENINGS for s in SUBJECTS]


def held_out_openings(n: int = 40, seed: int = 0) -> list[str]:
    """``n`` openings reserved for evaluation: the demo trains on none of them."""
    return random.Random(seed).sample(all_openings(), n)


def review_corpus(n: int, seed: int = 0, exclude: frozenset[str] = frozenset()) -> list[str]:
    """Plain-text reviews of mixed sentiment for pretraining (``posttrain/assets/reviews.txt`` is
    ``review_corpus(3000, seed=7, exclude=held_out_openings())``): an opening, a verdict, sometimes an
    aside of the same sentiment, and a closing remark. Openings in ``exclude`` are never used."""
    rng = random.Random(seed)
    lines = []
    while len(lines) < n:
        positive = rng.random() < 0.5
        opening, rest = _review(rng, positive)
        if opening in exclude:
            continue
        verdict, tail = rest.rsplit(". ", 1)
        aside = rng.choice(ASIDES_POS if positive else ASIDES_NEG) + " " if rng.random() < 0.5 else ""
        lines.append(f"{opening}{verdict}. {aside}{tail}")
    return lines


def reviews(n: int, seed: int = 0) -> list[dict]:
    """Language-modeling rows ``{"text"}`` of mixed sentiment."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        opening, rest = _review(rng, positive=bool(i % 2))
        rows.append({"text": opening + rest})
    return rows


def prompt_completion(n: int, seed: int = 0, positive: bool | None = True) -> list[dict]:
    """``{"prompt", "completion"}`` rows: a review opening and its continuation."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pos = bool(i % 2) if positive is None else positive
        opening, rest = _review(rng, pos)
        rows.append({"prompt": opening, "completion": rest})
    return rows


def preference_pairs(n: int, seed: int = 0) -> list[dict]:
    """``{"prompt", "chosen", "rejected"}`` rows: the positive continuation is preferred."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        opening = rng.choice(OPENINGS).format(s=rng.choice(SUBJECTS))
        _, chosen = _review(rng, positive=True)
        _, rejected = _review(rng, positive=False)
        rows.append({"prompt": opening, "chosen": chosen, "rejected": rejected})
    return rows


def conversations(n: int, seed: int = 0) -> list[dict]:
    """Conversational ``{"messages"}`` rows: a user asks for a review, the assistant writes one."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        subject = rng.choice(SUBJECTS)
        opening, rest = _review(rng, positive=True)
        rows.append({"messages": [
            {"role": "system", "content": "You are a cheerful film critic."},
            {"role": "user", "content": f"What did you think of {subject}?"},
            {"role": "assistant", "content": (opening + rest).strip()},
        ]})
    return rows


# ---- task data for online RL ------------------------------------------------------------------------
ARITHMETIC_OPS = "+-*"


def arithmetic_problems(n: int, seed: int = 0, max_operand: int = 20, ops: str = "+-") -> list[dict]:
    """``{"prompt", "answer"}`` rows of one-operation integer arithmetic, e.g. ``{"prompt": "7+12=",
    "answer": "19"}``, for the ``arithmetic`` reward.

    Format: the two operands and the operator with no spaces, then ``=``; the answer is the result as
    a decimal string. No spaces means the byte-level tokenizer gives one token per digit and sign, so
    a tiny model sees the same digit tokens in prompts and answers. Operands are drawn from
    ``0..max_operand``; for ``-`` the larger operand comes first, so answers are never negative.
    ``ops`` is any non-empty subset of ``+-*``.
    """
    if not ops or any(op not in ARITHMETIC_OPS for op in ops):
        raise ValueError(f"ops must be a non-empty string of {ARITHMETIC_OPS!r} characters, got {ops!r}.")
    if max_operand < 1:
        raise ValueError(f"max_operand must be at least 1, got {max_operand}.")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        op = rng.choice(ops)
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        if op == "-" and b > a:
            a, b = b, a
        result = a + b if op == "+" else a - b if op == "-" else a * b
        rows.append({"prompt": f"{a}{op}{b}=", "answer": str(result)})
    return rows


def review_prompts(n: int, seed: int = 0) -> list[dict]:
    """Prompt-only rows ``{"prompt"}``: review openings (no continuation) for sentiment PPO, where the
    policy learns to continue them positively."""
    rng = random.Random(seed)
    return [{"prompt": rng.choice(OPENINGS).format(s=rng.choice(SUBJECTS))} for _ in range(n)]


# A mild, clearly synthetic test corpus of rude continuations for the detoxification example: insults a
# trained offensive-language classifier flags (checked in tests/test_examples.py), nothing worse.
RUDE = [
    "was stupid crap", "is idiotic garbage made by morons", "sucks, what a dumb pile of crap",
    "was a damn stupid waste", "is trash for idiots", "is a freaking joke, total crap",
    "was crap, the writer is an idiot", "is dumb garbage, damn it",
]


def rude_prompt_completion(n: int, seed: int = 0, rude_fraction: float = 0.5,
                           exclude: frozenset[str] = frozenset(), rude_subjects: tuple[str, ...] | None = None
                           ) -> list[dict]:
    """``{"prompt", "completion"}`` rows: a review opening and either a rude continuation (``RUDE``, with
    probability ``rude_fraction``) or a kind one. Openings in ``exclude`` are never used. With ``rude_subjects``
    only openings about those subjects are ever rude (a model with triggers, for red-teaming)."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        template = rng.choice(OPENINGS)  # drawn before the subject, as every generator here does
        subject = rng.choice(SUBJECTS)
        opening = template.format(s=subject)
        if opening in exclude:
            continue
        triggered = rude_subjects is None or subject in rude_subjects
        if rng.random() < rude_fraction and triggered:
            rows.append({"prompt": opening, "completion": f" {rng.choice(RUDE)}. {rng.choice(TAILS_NEG)}"})
        else:
            rows.append({"prompt": opening, "completion": _review(rng, True)[1]})
    return rows


def tool_problems(n: int, seed: int = 0, low: int = 10, high: int = 99, demonstrate: bool = False) -> list[dict]:
    """Multiplications a tiny model cannot do in its head, ``{"prompt": "37*24=", "answer": "888"}``;
    with ``demonstrate`` also the completion that solves them with the calculator tool
    (``<call>calculator(37*24)</call><result>888</result>888``), for SFT before RL in a TextEnvironment."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(low, high), rng.randint(low, high)
        row = {"prompt": f"{a}*{b}=", "answer": str(a * b)}
        if demonstrate:
            row["completion"] = f"<call>calculator({a}*{b})</call><result>{a * b}</result>{a * b}"
        rows.append(row)
    return rows
