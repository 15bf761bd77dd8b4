"""A batch of sampled episodes, as token ids: what every online trainer consumes.

Layout, for a causal model: ``[prompt (left-padded) | completion (right-padded)]``. Left padding is
handled here once -- position ids restart at each row's first real token -- so no trainer has to
think about it. Seq2seq models take the prompt as encoder input and the completion as decoder labels.

Two masks over the completion: ``completion_attention`` (1 on every real token the model sees:
generated text, and tool output in a TextEnvironment) and ``completion_mask`` (1 on the tokens the
policy generated, which alone carry policy loss).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..data.collate import pad


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_attention: torch.Tensor  # [B, P] 1 on real prompt tokens
    completion_ids: torch.Tensor  # [B, C] right-padded
    completion_attention: torch.Tensor  # [B, C] 1 on real completion tokens (generated or inserted)
    completion_mask: torch.Tensor  # [B, C] 1 on tokens the policy generated (the loss's tokens)
    logprobs: torch.Tensor | None = None  # [B, C] the policy's log-probs at sampling time (0 on padding)
    values: torch.Tensor | None = None  # [B, C] a value head's values at sampling time, where generation gave them
    prompts: list = field(default_factory=list)  # the dataset's prompt values (text or messages)
    columns: dict = field(default_factory=dict)  # other dataset columns, a list per column (for rewards)
    rewards: dict = field(default_factory=dict)  # name -> [B] rewards the rollout source scored itself (None: n/a)
    truncated_prompts: int = 0  # prompts cut to max_prompt_length when this rollout was built

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def select(self, index) -> "Rollout":
        """The rows ``index`` (a list or tensor of row numbers, or a boolean mask)."""
        index = torch.as_tensor(index, device=self.completion_ids.device)
        if index.dtype == torch.bool:
            index = index.nonzero().squeeze(-1)
        rows = index.tolist()
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return replace(self, prompt_ids=self.prompt_ids[index], prompt_attention=self.prompt_attention[index],
                       completion_ids=self.completion_ids[index],
                       completion_attention=self.completion_attention[index],
                       completion_mask=self.completion_mask[index], logprobs=pick(self.logprobs), values=pick(self.values),
                       prompts=[self.prompts[i] for i in rows] if self.prompts else [],
                       columns={k: [v[i] for i in rows] for k, v in self.columns.items()},
                       rewards={k: [v[i] for i in rows] for k, v in self.rewards.items()})

    def completion_lists(self) -> list[list[int]]:
        """Each row's completion ids without padding (generated and inserted tokens)."""
        return [ids[att.bool()].tolist() for ids, att in zip(self.completion_ids, self.completion_attention)]


def pad_with_attention(sequences: list[list[int]], pad_id: int, side: str = "right",
                       device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ``(ids, attention)`` for id lists; ``side`` is where the padding goes."""
    sequences = [list(map(int, s)) for s in sequences]
    ids = pad(sequences, pad_id, side)
    attention = pad([[1] * len(s) for s in sequences], 0, side)
    return ids.to(device), attention.to(device)
