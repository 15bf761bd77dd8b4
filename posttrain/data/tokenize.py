"""Turn validated rows into token ids and loss masks.

Text is rendered into segments ``(text, trainable)`` -- the prompt or non-assistant turns are not
trainable, completions and assistant turns are -- and each segment is tokenized on its own, so a
prompt's ids are the same whatever follows it (token-in/token-out: rollouts, DPO prefix sharing
and SFT all see the same prompt ids).
"""

from __future__ import annotations

from .formats import DataFormatError

TRUNCATION_SIDES = ("right", "left")  # "right" drops the end (keeps the start); "left" drops the start
# Part of the tokenized-dataset cache key (PostTrainer._prepare): bump it whenever the same row and
# tokenizer start giving different ids, so a cached map from older code is not reused.
TOKENIZATION_VERSION = 3  # 2: no second eos after text that already ends with one; 3: SFT conversations
# trained on every token are rendered and tokenized whole


def check_tokenizer(tokenizer, needs_chat_template: bool = False) -> None:
    """Fail early, with the fix, when the tokenizer lacks what the data needs."""
    if tokenizer.eos_token_id is None:
        raise DataFormatError("The tokenizer has no eos token; completions must end with one. "
                              "Set tokenizer.eos_token (e.g. '</s>') before training.")
    if tokenizer.pad_token_id is None:
        raise DataFormatError("The tokenizer has no pad token, which batching needs. "
                              "Set tokenizer.pad_token = tokenizer.eos_token (or add a pad token).")
    if needs_chat_template and not getattr(tokenizer, "chat_template", None):
        raise DataFormatError("The dataset is conversational but the tokenizer has no chat template. "
                              "Set tokenizer.chat_template (a Jinja template) or use a chat model's tokenizer.")


def _template(tokenizer, messages, add_generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _conversation_segments(tokenizer, messages, row: int) -> list[tuple[str, bool]]:
    """Split a rendered conversation into non-assistant and assistant segments by rendering prefixes."""
    segments, rendered = [], ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _template(tokenizer, messages[:i], add_generation_prompt=True)
        upto = _template(tokenizer, messages[: i + 1])
        if not before.startswith(rendered) or not upto.startswith(before):
            raise DataFormatError(f"Row {row}: the chat template does not render conversations prefix by "
                                  "prefix, so assistant turns cannot be located for the loss mask. Use a "
                                  "template where each turn appends text, or set assistant_only_loss=False.")
        segments += [(before[len(rendered):], False), (upto[len(before):], True)]
        rendered = upto
    full = _template(tokenizer, messages)
    segments.append((full[len(rendered):], False))
    return [(text, trainable) for text, trainable in segments if text]


def with_eos(text: str, eos: str) -> str:
    """``text`` ending in exactly one eos: data that already spells the eos out does not get a second,
    which would teach the model to emit eos after eos."""
    return text if text.endswith(eos) else text + eos


def render_segments(tokenizer, fmt_name: str, conversational: bool, row: dict, index: int,
                    prompt_key: str = "prompt", completion_key: str = "completion") -> list[tuple[str, bool]]:
    """Segments ``(text, trainable)`` for SFT-style formats; plain text ends with the eos token."""
    eos = tokenizer.eos_token
    if fmt_name == "language_modeling":
        return [(with_eos(row["text"], eos), True)]
    if fmt_name == "conversational":
        return _conversation_segments(tokenizer, row["messages"], index)
    prompt, completion = row[prompt_key], row[completion_key]
    if not conversational:
        return [(prompt, False), (with_eos(completion, eos), True)]
    before = _template(tokenizer, prompt, add_generation_prompt=True)
    full = _template(tokenizer, prompt + completion)
    if not full.startswith(before):
        raise DataFormatError(f"Row {index}: rendering prompt+completion with the chat template does not start "
                              "with the rendered prompt; the completion cannot be located.")
    return [(before, False), (full[len(before):], True)]


def tokenize_segments(tokenizer, segments, plain_text: bool) -> tuple[list[int], list[int]]:
    """Token ids and a 0/1 mask (1 = trainable) for segments; special tokens only before plain text."""
    ids, mask = [], []
    for k, (text, trainable) in enumerate(segments):
        piece = tokenizer(text, add_special_tokens=plain_text and k == 0)["input_ids"]
        ids += piece
        mask += [int(trainable)] * len(piece)
    return ids, mask


def truncate(ids: list[int], mask: list[int], max_length: int | None, side: str) -> tuple[list[int], list[int]]:
    if side not in TRUNCATION_SIDES:
        raise ValueError(f"truncation_side must be one of {TRUNCATION_SIDES}, got {side!r}.")
    if max_length is None or len(ids) <= max_length:
        return ids, mask
    if side == "right":
        return ids[:max_length], mask[:max_length]
    return ids[-max_length:], mask[-max_length:]


def tokenize_sft_row(row: dict, index: int, tokenizer, fmt, max_length: int | None, truncation_side: str,
                     train_on_prompt: bool) -> dict:
    """``{"input_ids", "completion_mask"}`` for one SFT row; ``train_on_prompt`` makes every token trainable.

    A row that truncation leaves with nothing trainable is returned as is (the trainer drops it, as
    TRL does); a conversation with no assistant turn to learn from is an error.
    """
    if fmt.name == "conversational" and train_on_prompt:  # one rendering, as TRL tokenizes it
        segments = [(_template(tokenizer, row["messages"]), True)]
    else:
        segments = render_segments(tokenizer, fmt.name, fmt.conversational, row, index)
    plain = not fmt.conversational
    ids, mask = tokenize_segments(tokenizer, segments, plain)
    if train_on_prompt:
        mask = [1] * len(ids)
    # Position 0 is never predicted (nothing precedes it), so at least one later trainable token is needed.
    if sum(mask[1:]) == 0:
        raise DataFormatError(
            f"Row {index}: there is nothing to learn from: the conversation has no assistant turn. Add an "
            "assistant message, drop the row, or set assistant_only_loss=False to train on every token.")
    ids, mask = truncate(ids, mask, max_length, truncation_side)
    return {"input_ids": ids, "completion_mask": mask}


def has_trainable_tokens(row: dict) -> bool:
    """Whether a tokenized SFT row has a trainable token after its first (which nothing predicts)."""
    return any(row["completion_mask"][1:])


def extract_prompt(chosen, rejected):
    """Implicit-prompt preference rows: the shared beginning of chosen and rejected is the prompt."""
    if isinstance(chosen, list):
        k = 0
        while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
            k += 1
        return chosen[:k], chosen[k:], rejected[k:]
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    # Cut at a word boundary so neither answer starts mid-word.
    cut = max(chosen.rfind(" ", 0, k), 0) if k < len(chosen) or k < len(rejected) else k
    return chosen[:cut], chosen[cut:], rejected[cut:]


def fit_prompt_and_answers(prompt_ids: list[int], answers: list[list[int]], max_length: int | None,
                           max_prompt_length: int | None, index: int) -> tuple[list[int], list[list[int]]]:
    """Keep the end of the prompt (``max_prompt_length``) and the start of each answer, so that
    prompt + answer fits ``max_length``."""
    if max_prompt_length is not None:
        prompt_ids = prompt_ids[-max_prompt_length:]
    if max_length is None:
        return prompt_ids, answers
    budget = max_length - len(prompt_ids)
    if budget <= 0:
        raise DataFormatError(f"Row {index}: the prompt alone has {len(prompt_ids)} tokens, leaving no room "
                              f"for the answers within max_length={max_length}. Raise max_length or set "
                              "max_prompt_length to keep only the prompt's end.")
    return prompt_ids, [a[:budget] for a in answers]


def tokenize_preference_row(row: dict, index: int, tokenizer, fmt, max_length: int | None,
                            max_prompt_length: int | None = None) -> dict:
    """``{"prompt_ids", "chosen_ids", "rejected_ids"}``: the prompt tokenized once, answers after it.

    Truncation keeps the end of the prompt (``max_prompt_length``) and the start of each answer
    (``max_length`` for prompt + answer).
    """
    if fmt.name == "implicit_preference":
        prompt, chosen, rejected = extract_prompt(row["chosen"], row["rejected"])
    else:
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    out = {}
    for key, completion in (("chosen", chosen), ("rejected", rejected)):
        if fmt.conversational and not prompt:
            segments = [(_template(tokenizer, completion), True)]
        else:
            r = {"prompt": prompt, "completion": completion}
            segments = render_segments(tokenizer, "prompt_completion", fmt.conversational, r, index)
        if "prompt_ids" not in out:  # the prompt renders the same for both answers: tokenize it once
            prompt_segments = [s for s in segments if not s[1]]
            out["prompt_ids"], _ = tokenize_segments(tokenizer, prompt_segments, not fmt.conversational)
        out[f"{key}_ids"], _ = tokenize_segments(tokenizer, [s for s in segments if s[1]], plain_text=False)
    out["prompt_ids"], (out["chosen_ids"], out["rejected_ids"]) = fit_prompt_and_answers(
        out["prompt_ids"], [out["chosen_ids"], out["rejected_ids"]], max_length, max_prompt_length, index)
    if not out["chosen_ids"] or not out["rejected_ids"]:
        raise DataFormatError(f"Row {index}: an answer is empty after tokenization.")
    if "margin" in row:
        out["margin"] = float(row["margin"])
    return out


def tokenize_unpaired_row(row: dict, index: int, tokenizer, fmt, max_length: int | None,
                          max_prompt_length: int | None = None) -> dict:
    """``{"prompt_ids", "completion_ids", "label"}`` for unpaired preference (KTO) rows, truncated like pairs."""
    segments = render_segments(tokenizer, "prompt_completion", fmt.conversational, row, index)
    prompt_ids, _ = tokenize_segments(tokenizer, [s for s in segments if not s[1]], not fmt.conversational)
    completion_ids, _ = tokenize_segments(tokenizer, [s for s in segments if s[1]], plain_text=False)
    prompt_ids, (completion_ids,) = fit_prompt_and_answers(prompt_ids, [completion_ids], max_length,
                                                           max_prompt_length, index)
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "label": bool(row["label"])}


def tokenize_prompt(tokenizer, prompt, max_prompt_length: int | None = None) -> list[int]:
    """A prompt's ids as training saw them before the completion: a plain string with the tokenizer's
    special tokens, or messages rendered by the chat template up to the assistant's turn. Too-long
    prompts keep their end (``max_prompt_length``)."""
    if isinstance(prompt, list):
        ids, _ = tokenize_segments(tokenizer, [(_template(tokenizer, prompt, add_generation_prompt=True), False)],
                                   plain_text=False)
    else:
        ids, _ = tokenize_segments(tokenizer, [(prompt, False)], plain_text=True)
    return ids[-max_prompt_length:] if max_prompt_length else ids
