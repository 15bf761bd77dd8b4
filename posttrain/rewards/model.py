"""Score completions with a trained reward model (a one-label sequence classifier).

The text is tokenized exactly as :class:`~posttrain.trainers.reward.RewardTrainer` tokenized a
chosen/rejected answer: plain-text prompts are the prompt then ``completion + eos`` (each tokenized
on its own, special tokens only before the prompt); conversational prompts (message lists) go
through the chat template with the completion as the assistant turn. Completions may be text or
TRL's conversational message lists (kept as messages for a conversational prompt; for a plain-text
prompt their text, :func:`~posttrain.rewards.base.completion_text`, is used). Called with keywords
like any reward function (``scorer(prompts=..., completions=..., **columns)``). The reward model's
own tokenizer is used, so it need not share the policy's vocabulary.
"""

from __future__ import annotations

import os

import torch

from ..data.tokenize import check_tokenizer, fit_prompt_and_answers, render_segments, tokenize_segments
from ..models.loading import load_model, load_tokenizer
from ..rollout.batch import pad_with_attention
from .base import completion_text


class RewardModelScorer:
    """A reward function backed by a sequence-classification model: the score of a sample is the
    logit of label 0 for prompt + completion.

    ``model_or_dir``: a directory saved with ``save_pretrained`` (e.g. by ``posttrain reward``) or a
    loaded model (then ``tokenizer`` is required). ``max_length`` truncates like reward training
    (the completion is cut so prompt + completion fits; a prompt longer than that is an error).
    Runs in eval mode under ``torch.no_grad`` in batches of ``batch_size`` on the model's device.
    """

    __name__ = "reward_model"

    def __init__(self, model_or_dir, tokenizer=None, batch_size: int = 32, max_length: int | None = None):
        if isinstance(model_or_dir, (str, os.PathLike)):
            path = os.fspath(model_or_dir)
            self.model = load_model(path, "seq-cls")
            tokenizer = tokenizer if tokenizer is not None else load_tokenizer(path)
            self.source = path
        else:
            if tokenizer is None:
                raise ValueError("RewardModelScorer got a model object without a tokenizer; pass tokenizer=... "
                                 "(the one the reward model was trained with).")
            self.model, self.source = model_or_dir, getattr(model_or_dir.config, "name_or_path", "")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        check_tokenizer(tokenizer)
        self.tokenizer, self.batch_size, self.max_length = tokenizer, batch_size, max_length
        config = self.model.config
        if getattr(config, "pad_token_id", None) is None:
            # Sequence classifiers find each row's last real token through pad_token_id.
            config.pad_token_id = tokenizer.pad_token_id
        # Pad with the id the model treats as padding, so a score never depends on the batch it is in.
        self.pad_token_id = config.pad_token_id

    def __repr__(self) -> str:
        return f"RewardModelScorer({self.source!r})"

    def tokenize(self, prompt, completion, index: int = 0) -> list[int]:
        """The ids reward training would have built for ``prompt`` + ``completion`` (before padding)."""
        conversational = isinstance(prompt, list)
        if conversational and not isinstance(completion, list):
            completion = [{"role": "assistant", "content": completion}]
        elif not conversational and not isinstance(completion, str):
            completion = completion_text(completion)  # a message-list completion of a plain-text prompt
        row = {"prompt": prompt, "completion": completion}
        segments = render_segments(self.tokenizer, "prompt_completion", conversational, row, index)
        prompt_ids, _ = tokenize_segments(self.tokenizer, [s for s in segments if not s[1]], not conversational)
        answer_ids, _ = tokenize_segments(self.tokenizer, [s for s in segments if s[1]], plain_text=False)
        prompt_ids, (answer_ids,) = fit_prompt_and_answers(prompt_ids, [answer_ids], self.max_length, None, index)
        return prompt_ids + answer_ids

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"Got {len(prompts)} prompts for {len(completions)} completions.")
        sequences = [self.tokenize(p, c, i) for i, (p, c) in enumerate(zip(prompts, completions))]
        # Longest first, so each batch holds sequences of similar length (little padding).
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        scores = [0.0] * len(sequences)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start: start + self.batch_size]
                    seqs = [sequences[i] for i in chunk]
                    input_ids, attention_mask = pad_with_attention(seqs, self.pad_token_id, device=device)
                    logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
                    for i, value in zip(chunk, logits[:, 0].float().tolist()):
                        scores[i] = value
        finally:
            self.model.train(was_training)
        return scores
