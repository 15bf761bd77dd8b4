"""TextEnvironment: multi-turn rollouts in which the model calls tools mid-generation.

An episode: the model generates until it writes a tool call, the tool runs, its output is appended
as tokens, and generation continues -- until a turn ends without a call (eos, a stop string, or the
sampling's ``max_new_tokens`` per turn), the turn limit, or the token budget. Many episodes run as
one batch, turn by turn. The environment is a rollout source: PPO, GRPO, RLOO and ReST take it in
place of plain sampling (``rollout_source=env``, CLI ``--env``).

Call syntax (plain-text prompts)::

    ... <call>calculator(12*(3+4))</call><result>84</result> ...

The model writes ``<call>NAME(ARGUMENT)</call>``; everything between the parentheses is passed to
the tool as one string; the environment appends ``<result>OUTPUT</result>``. Conversational prompts
(message lists) use the tokenizer's own tool-calling chat template when it has one: tools are
rendered by the template (``tools=``), the model writes ``<tool_call>{"name": ..., "arguments":
{...}}</tool_call>`` (the Hermes/Qwen convention), and the result is rendered as a ``tool`` message;
with a template that cannot render tools they use the plain syntax, the header as a system message.

Token-in/token-out: generated tokens are kept as generated and inserted text is tokenized once, on
its own; nothing already in the episode is decoded and re-encoded (generated text is decoded only to
find the call). Each turn re-runs generation over the episode so far (the KV cache is not kept across
turns): simple and exact, at the cost of recomputing the prefix. The completion mask is 1 only on
generated tokens, so tool output (and template text around it) carries no policy loss. A tool that
raises, gets a malformed call or an unknown name returns an error text to the model; the rollout goes on.

Prompts longer than the trainer's ``max_prompt_length`` (given to :meth:`TextEnvironment.bind`) keep
their last tokens -- the header or tool listing comes first, so it is what gets cut -- and the
rollout's ``truncated_prompts`` counts them. ``reward_funcs`` score finished episodes inside the
environment (e.g. from how many tool calls an episode made); their values land in ``rollout.rewards``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import torch

from ..rewards.base import RewardSet, as_completions
from ..losses.logprobs import forward_completion
from .batch import Rollout, pad_with_attention
from .sampling import HFGenerate, SamplingConfig, completion_length

CALL = re.compile(r"<call>\s*([A-Za-z_][\w.]*)\s*\((.*)\)\s*</call>\s*$", re.S)
HERMES_CALL = re.compile(r"<tool_call>(.*)</tool_call>\s*$", re.S)


def tool_name(tool) -> str:
    return getattr(tool, "__name__", type(tool).__name__)


def describe_tools(tools: dict) -> str:
    """The header that tells the model which tools exist and how to call them."""
    lines = ["Tools (call one with <call>NAME(ARGUMENT)</call>; the result follows in <result></result>):"]
    for name, tool in tools.items():
        doc = (getattr(tool, "__doc__", None) or "").strip().splitlines()
        lines.append(f"- {name}: {doc[0] if doc else 'no description'}")
    return "\n".join(lines) + "\n"


class TextEnvironment:
    """Tools plus the rules of an episode. ``tools``: callables (``tool(argument: str) -> str``) or a
    dict name -> callable. ``max_turns``: tool calls per episode at most; ``max_tokens``: the
    completion's total length (generated + inserted); ``max_tool_output_tokens``: longer tool output is
    cut (to its first ``max_tool_output_tokens`` tokens, then " [truncated]"). ``header``: text put before
    each plain-text prompt, or as a system message before message prompts whose chat template cannot
    render tools (default: the tool list; "" for none).

    ``reward_funcs``: a reward function or a list of them (callables, or specs as trainers take them)
    that score each finished episode. Each is called with keywords, like TRL's reward functions::

        fn(prompts=..., completions=[...], completion_ids=[...], tool_calls=[...], tool_errors=[...], **columns)

    ``completions``: each episode's decoded completion, tool output included (special tokens skipped) --
    for a message-list prompt wrapped as ``[{"role": "assistant", "content": text}]``, as trainers pass
    completions (see :mod:`posttrain.rewards.base`);
    ``tool_calls``: how many tools ran in each episode; ``tool_errors``: how many of their outputs start
    with "Error"; ``columns``: the dataset's other columns. It returns one float (or None where it does
    not apply) per episode; the values are in ``rollout.rewards[name]`` (name: ``__name__``, else the
    class name)."""

    def __init__(self, tools, max_turns: int = 3, max_tokens: int = 128, max_tool_output_tokens: int = 32,
                 header: str | None = None, reward_funcs=None):
        tools = tools if isinstance(tools, dict) else {tool_name(t): t for t in tools}
        if not tools:
            raise ValueError("TextEnvironment needs at least one tool.")
        self.tools, self.max_turns, self.max_tokens = tools, max_turns, max_tokens
        self.max_tool_output_tokens = max_tool_output_tokens
        self.header = describe_tools(tools) if header is None else header
        # names, checks and error reports as for a trainer's rewards (weights are the trainer's business)
        self.reward_funcs = None if reward_funcs is None else RewardSet(reward_funcs)
        self.tokenizer, self.sampling, self.backend = None, None, HFGenerate()
        self.max_prompt_length = None

    # ---- wiring into a trainer --------------------------------------------------------------------
    def bind(self, tokenizer, sampling: SamplingConfig, max_prompt_length: int | None = None) -> "TextEnvironment":
        """Called by the trainer: its tokenizer and sampling settings (per turn, the budget applies), and
        ``max_prompt_length``: longer starting prompts keep their last tokens (None: no limit)."""
        if max_prompt_length is not None and (isinstance(max_prompt_length, bool) or
                                              not isinstance(max_prompt_length, int) or max_prompt_length < 1):
            raise ValueError(f"max_prompt_length must be a positive int or None, got {max_prompt_length!r}.")
        self.tokenizer, self.sampling, self.max_prompt_length = tokenizer, sampling, max_prompt_length
        return self

    def uses_chat_template(self, prompt) -> bool:
        template = getattr(self.tokenizer, "chat_template", None) or ""
        return isinstance(prompt, list) and "tools" in template

    def prompt_ids(self, prompt) -> list[int]:
        """The episode's starting ids: the header and the prompt, or the chat template with the tools."""
        if isinstance(prompt, list):
            if self.uses_chat_template(prompt):
                kwargs = {"tools": [self._schema(n, t) for n, t in self.tools.items()]}
            else:  # a template without tool support: the plain call syntax, explained in a system message
                prompt, kwargs = ([{"role": "system", "content": self.header}] if self.header else []) + prompt, {}
            text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True, **kwargs)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(self.header + prompt)["input_ids"]

    @staticmethod
    def _schema(name: str, tool) -> dict:
        doc = (getattr(tool, "__doc__", None) or "").strip()
        return {"type": "function", "function": {"name": name, "description": doc.splitlines()[0] if doc else "",
                "parameters": {"type": "object", "properties": {"argument": {"type": "string"}},
                               "required": ["argument"]}}}

    # ---- tools ------------------------------------------------------------------------------------
    def run_tool(self, generated_text: str, chat: bool) -> str:
        """The output text of the call that ends ``generated_text`` (an error text if anything fails)."""
        if chat:
            match = HERMES_CALL.search(generated_text)
            try:
                call = json.loads(match.group(1)) if match else None
                name, argument = call["name"], call.get("arguments", {})
                argument = argument.get("argument", "") if isinstance(argument, dict) else str(argument)
            except (ValueError, TypeError, KeyError, AttributeError):
                return 'Error: malformed tool call; write <tool_call>{"name": ..., "arguments": {"argument": ...}}</tool_call>.'
        else:
            match = CALL.search(generated_text[generated_text.rfind("<call>"):])
            if match is None:
                return "Error: malformed call; write <call>NAME(ARGUMENT)</call>."
            name, argument = match.group(1), match.group(2)
        if name not in self.tools:
            return f"Error: unknown tool {name!r}; available: {', '.join(self.tools)}."
        try:
            return str(self.tools[name](argument))
        except Exception as err:  # a tool's failure is the model's feedback, never the trainer's crash
            return f"Error: {type(err).__name__}: {err}"

    def result_ids(self, output: str, chat: bool, messages: list | None = None) -> list[int]:
        """Tokens that insert a tool's output (cut to ``max_tool_output_tokens``) into the episode: the
        inserted text is tokenized once, as a whole."""
        output_ids = self.tokenizer(output, add_special_tokens=False)["input_ids"]
        if len(output_ids) > self.max_tool_output_tokens:
            output = self.tokenizer.decode(output_ids[: self.max_tool_output_tokens]) + " [truncated]"
        text = self._chat_tool_text(messages, output) if chat else f"<result>{output}</result>"
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _chat_tool_text(self, messages: list, output: str) -> str:
        """The template's rendering of what follows the model's call: the end of the assistant's turn
        (generation stopped at the call, before it), the tool message and the next assistant turn's
        opening, found by rendering the conversation with and without the tool message."""
        call = [{"role": "assistant", "content": "CALL"}]
        before = self.tokenizer.apply_chat_template(messages + call, tokenize=False)
        after = self.tokenizer.apply_chat_template(messages + call + [{"role": "tool", "content": output}],
                                                   tokenize=False, add_generation_prompt=True)
        return after[before.rindex("CALL") + len("CALL"):]

    # ---- the rollout ------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, model, prompt_ids: list[list[int]], prompts: list | None = None, columns: dict | None = None,
                 with_logprobs: bool | str = True) -> Rollout:
        if self.tokenizer is None:
            raise RuntimeError("TextEnvironment is not bound to a tokenizer: pass it to a trainer as "
                               "rollout_source=env, or call env.bind(tokenizer, SamplingConfig(...)).")
        prompts = list(prompts or [None] * len(prompt_ids))
        chat = [self.uses_chat_template(p) for p in prompts]
        starts = [self.prompt_ids(p) if p is not None else list(ids) for p, ids in zip(prompts, prompt_ids)]
        limit = self.max_prompt_length
        truncated = sum(limit is not None and len(s) > limit for s in starts)
        if truncated:  # keep each prompt's end, as tokenize_prompt does
            starts = [s[-limit:] for s in starts]
        tool_calls, tool_errors = [0] * len(starts), [0] * len(starts)
        ids = [[] for _ in starts]  # completion ids per episode
        mask = [[] for _ in starts]  # 1 on generated tokens
        active = list(range(len(starts)))
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            for turn in range(self.max_turns + 1):
                if not active:
                    break
                # the largest budget left; each row is cut to its own below (one episode's budget must
                # not shorten another's turn)
                budget = min(self.sampling.max_new_tokens, max(self.max_tokens - len(ids[i]) for i in active))
                if budget <= 0:
                    break
                turn_sampling = dataclasses.replace(
                    self.sampling, max_new_tokens=budget, min_new_tokens=0,
                    stop_strings=tuple(self.sampling.stop_strings) + ("</call>", "</tool_call>"))
                batch, attention = pad_with_attention([starts[i] + ids[i] for i in active], self.tokenizer.pad_token_id,
                                                      side="left", device=device)
                raw = self.backend.generate(model, batch, attention, turn_sampling, self.tokenizer).tolist()
                still = []
                for i, row in zip(active, raw):
                    new = row[: min(completion_length(row, self.tokenizer.eos_token_id, turn_sampling.stop_strings,
                                                      self.tokenizer), self.max_tokens - len(ids[i]))]
                    ids[i] += new
                    mask[i] += [1] * len(new)
                    text = self.tokenizer.decode(new)
                    ended = self.tokenizer.eos_token_id in new
                    called = text.rstrip().endswith("</call>") or text.rstrip().endswith("</tool_call>")
                    if ended or not called or turn == self.max_turns or len(ids[i]) >= self.max_tokens:
                        continue
                    output = self.run_tool(text, chat[i])
                    tool_calls[i] += 1
                    tool_errors[i] += output.startswith("Error")
                    inserted = self.result_ids(output, chat[i], prompts[i] if chat[i] else None)
                    inserted = inserted[: max(0, self.max_tokens - len(ids[i]))]
                    ids[i] += inserted
                    mask[i] += [0] * len(inserted)
                    still.append(i)
                active = [i for i in still if len(ids[i]) < self.max_tokens]
            prompt_batch, prompt_attention = pad_with_attention(starts, self.tokenizer.pad_token_id, "left", device)
            completions, completion_attention = pad_with_attention(ids, self.tokenizer.pad_token_id, device=device)
            completion_mask, _ = pad_with_attention(mask, 0, device=device)
            rollout = Rollout(prompt_batch, prompt_attention, completions, completion_attention, completion_mask,
                              prompts=prompts, columns=dict(columns or {}), truncated_prompts=truncated)
            if with_logprobs is True:  # "if_free": a tool rollout has none for free
                rollout.logprobs, _ = forward_completion(model, rollout, self.sampling.temperature or 1.0)
        finally:
            model.train(was_training)
        rollout.rewards = self.score_episodes(prompts, ids, tool_calls, tool_errors, rollout.columns)
        return rollout

    def score_episodes(self, prompts: list, completion_ids: list[list[int]], tool_calls: list[int],
                       tool_errors: list[int], columns: dict) -> dict:
        """``reward_funcs``' values for finished episodes: name -> one float (float32 precision, as the
        trainer sums them) or None per episode."""
        if self.reward_funcs is None:
            return {}
        extra = {"completion_ids": completion_ids, "tool_calls": tool_calls, "tool_errors": tool_errors}
        clash = sorted(set(columns) & {"prompts", "completions", *extra})
        if clash:
            raise ValueError(f"Dataset column(s) {clash} clash with what TextEnvironment passes to its reward "
                             "functions; rename the column(s).")
        texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        completions = as_completions(prompts, texts)  # as the trainer passes them
        result = self.reward_funcs(prompts, completions, **extra, **columns)  # checked, called by keyword
        return {name: [None if math.isnan(v) else v for v in values.tolist()]
                for name, values in result.per_function.items()}


def calculator_environment(max_turns: int = 2, max_tokens: int = 48, header: str = "") -> TextEnvironment:
    """The calculator task's environment (``--env calculator``): one tool, no header (the SFT
    demonstrations teach the call syntax), room for a call, its result and the answer."""
    from ..tools import calculator

    return TextEnvironment([calculator], max_turns=max_turns, max_tokens=max_tokens, header=header)


BUILTIN_ENVIRONMENTS = {"calculator": calculator_environment}


def load_environment(spec: str) -> TextEnvironment:
    """An environment from a spec: a built-in name (``calculator``) or ``package.module:factory``, a function
    called with no arguments that returns the environment."""
    if spec in BUILTIN_ENVIRONMENTS:
        return BUILTIN_ENVIRONMENTS[spec]()
    from ..imports import IMPORT_PATH, import_callable

    if not IMPORT_PATH.match(spec):
        raise ValueError(f"Unknown environment {spec!r}: use a built-in ({', '.join(BUILTIN_ENVIRONMENTS)}) or "
                         "'package.module:factory' (a function returning a TextEnvironment).")
    return import_callable(spec, "Environment")()
