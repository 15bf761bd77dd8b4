"""TextEnvironment: multi-turn tool rollouts. A scripted generation backend plays fixed turns, so the token
history, the masks, tool faults and budgets are checked exactly; a short GRPO run checks the wiring."""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch

import posttrain
from posttrain import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer
from posttrain.data import toy
from posttrain.losses.rl import clipped_policy_loss
from posttrain.rewards import RewardError
from posttrain.rollout import SamplingConfig, forward_completion
from posttrain.rollout.environment import TextEnvironment, describe_tools
from posttrain.tools import PythonRunner, calculator

posix_only = pytest.mark.skipif(os.name != "posix", reason="PythonRunner needs POSIX process limits")

CALL = "<call>calculator(2+3)</call>"
RESULT = "<result>5</result>"
HERMES = '<tool_call>{"name": "calculator", "arguments": {"argument": "2+3"}}</tool_call>'

# ChatML with tool support: a system block listing the tools as JSON, and "tool" messages as their own turn.
TOOL_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\nYou may call these tools:\n' }}"
    "{% for tool in tools %}{{ tool | tojson }}{{ '\n' }}{% endfor %}"
    "{{ 'Call one as <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>.<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def model():
    return posttrain.load_model("tiny:llama", seed=0)


@pytest.fixture(scope="module")
def tok():
    return posttrain.load_tokenizer("tiny:llama")


@pytest.fixture(scope="module")
def enc(tok):
    return lambda text: tok(text, add_special_tokens=False)["input_ids"]


class Scripted:
    """A generation backend that plays fixed turns. ``scripts[key]`` lists the turn texts of the episode whose
    context contains ``key``; a turn is the text's tokens (no special tokens), then eos unless it ends with a
    tool call (a real model stops at the call), cut to ``max_new_tokens`` like a real backend, padded with pad.
    Every call's contexts (prompt rows without padding) and sampling settings are recorded."""

    def __init__(self, tok, scripts: dict[str, list[str]]):
        self.tok, self.scripts = tok, scripts
        self.turns = {key: 0 for key in scripts}
        self.calls: list[tuple[list[list[int]], SamplingConfig]] = []

    def generate(self, model, prompt_ids, prompt_attention, sampling, tokenizer):
        contexts = [ids[att.bool()].tolist() for ids, att in zip(prompt_ids, prompt_attention)]
        self.calls.append((contexts, sampling))
        rows = []
        for context in contexts:
            text = self.tok.decode(context)
            keys = [k for k in self.scripts if k in text]
            assert len(keys) == 1, f"no unique script for context {text!r}: {keys}"
            turn = self.scripts[keys[0]][self.turns[keys[0]]]
            self.turns[keys[0]] += 1
            ids = self.tok(turn, add_special_tokens=False)["input_ids"]
            if not turn.endswith(("</call>", "</tool_call>")):
                ids = ids + [self.tok.eos_token_id]
            rows.append(ids[: sampling.max_new_tokens])
        width = max(len(r) for r in rows)
        return torch.tensor([r + [self.tok.pad_token_id] * (width - len(r)) for r in rows])


def make_env(tok, scripts, tools=(calculator,), max_new_tokens=64, max_prompt_length=None, **kwargs):
    env = TextEnvironment(list(tools) if not isinstance(tools, dict) else tools, **{"header": "", **kwargs})
    env.bind(tok, SamplingConfig(max_new_tokens=max_new_tokens), max_prompt_length=max_prompt_length)
    env.backend = Scripted(tok, scripts)
    return env


def run(env, model, tok, prompts, with_logprobs=False):
    ids = [tok(p)["input_ids"] if isinstance(p, str) else [] for p in prompts]
    return env(model, ids, prompts, with_logprobs=with_logprobs)


def row(rollout, i):
    """(completion ids, completion mask) of row ``i`` without padding."""
    keep = rollout.completion_attention[i].bool()
    return rollout.completion_ids[i][keep].tolist(), rollout.completion_mask[i][keep].tolist()


def prompt_row(rollout, i):
    return rollout.prompt_ids[i][rollout.prompt_attention[i].bool()].tolist()


# --- 1. masks: the loss sees generated tokens only ---------------------------------------------------------

def test_mask_is_one_on_generated_tokens_only(model, tok, enc):
    env = make_env(tok, {"What is 2+3?": [CALL, "5"]})
    rollout = run(env, model, tok, ["What is 2+3?"], with_logprobs=True)
    eos = tok.eos_token_id
    gen1, result, gen2 = enc(CALL), enc(RESULT), enc("5") + [eos]
    assert rollout.completion_ids[0].tolist() == gen1 + result + gen2
    assert rollout.completion_mask[0].tolist() == [1] * len(gen1) + [0] * len(result) + [1] * len(gen2)
    assert rollout.completion_attention[0].tolist() == [1] * (len(gen1) + len(result) + len(gen2))
    assert tok.decode(rollout.completion_ids[0]) == CALL + RESULT + "5" + tok.eos_token
    assert rollout.logprobs.shape == rollout.completion_ids.shape and torch.isfinite(rollout.logprobs).all()

    mask = rollout.completion_mask
    # a leaf tensor of log-probs: the loss's gradient is zero exactly at the tool output, nonzero elsewhere
    logps = torch.zeros_like(mask, dtype=torch.float64, requires_grad=True)
    loss, _ = clipped_policy_loss(logps, logps.detach(), advantages=torch.ones(1), mask=mask, epsilon=0.2)
    loss.backward()
    on, off = mask.bool(), ~mask.bool()
    assert (logps.grad[off] == 0).all()
    assert (logps.grad[on] != 0).all()
    # the model's own log-probs of the episode: the same split, through the real forward pass
    model_logps, _ = forward_completion(model, rollout)
    loss, _ = clipped_policy_loss(model_logps, model_logps.detach(), advantages=torch.ones(1), mask=mask,
                                  epsilon=0.2)
    (grad,) = torch.autograd.grad(loss, model_logps)
    assert (grad[off] == 0).all() and (grad[on] != 0).all()
    assert torch.allclose(model_logps.detach(), rollout.logprobs, atol=1e-5)  # sampling-time log-probs


def test_padding_rows_have_no_attention_and_no_mask(model, tok, enc):
    env = make_env(tok, {"alpha": [CALL, "5"], "bravo": ["7"]})
    rollout = run(env, model, tok, ["alpha", "bravo"])
    n = len(enc(CALL)) + len(enc(RESULT)) + 2
    assert rollout.completion_ids.shape == (2, n)
    assert rollout.completion_attention[1].tolist() == [1, 1] + [0] * (n - 2)
    assert rollout.completion_mask[1].tolist() == [1, 1] + [0] * (n - 2)
    assert (rollout.completion_ids[1, 2:] == tok.pad_token_id).all()


# --- 2. the token history -------------------------------------------------------------------------------------

def test_token_history_is_segmentwise_and_equals_one_shot_tokenization(model, tok, enc):
    env = make_env(tok, {"What is 2+3?": [CALL, "5"]}, header=None)  # the default header: the tool list
    assert env.header == describe_tools({"calculator": calculator}) and "calculator" in env.header
    rollout = run(env, model, tok, ["What is 2+3?"])
    assert prompt_row(rollout, 0) == tok(env.header + "What is 2+3?")["input_ids"]
    ids, _ = row(rollout, 0)
    assert ids == enc(CALL) + enc(RESULT) + enc("5") + [tok.eos_token_id]
    # for this tokenizer the segment-wise history is what one-shot tokenization of the whole text gives
    assert ids == enc(CALL + RESULT + "5") + [tok.eos_token_id]
    # token-in/token-out: the second turn's context is the prompt, the generated and the inserted ids as they were
    (first, _), (second, sampling) = env.backend.calls
    assert first == [prompt_row(rollout, 0)]
    assert second == [prompt_row(rollout, 0) + enc(CALL) + enc(RESULT)]
    assert "</call>" in sampling.stop_strings and "</tool_call>" in sampling.stop_strings


def test_episodes_with_different_numbers_of_turns_in_one_batch(model, tok, enc):
    eos = tok.eos_token_id
    scripts = {
        "alpha": [CALL, "<call>calculator(5*4)</call>", "20"],                      # two calls, then answers
        "bravo": ["7"],                                                             # answers directly
        "charlie": ["<call>calculator(1+1)</call>", "<call>calculator(2+2)</call>",  # hits max_turns:
                    "<call>calculator(3+3)</call>", "never asked"],                 # the 3rd call is not run
    }
    env = make_env(tok, scripts, max_turns=2)
    rollout = run(env, model, tok, ["alpha", "bravo", "charlie"])
    expected = {
        0: [(CALL, 1), (RESULT, 0), ("<call>calculator(5*4)</call>", 1), ("<result>20</result>", 0), ("20", 1)],
        1: [("7", 1)],
        2: [("<call>calculator(1+1)</call>", 1), ("<result>2</result>", 0), ("<call>calculator(2+2)</call>", 1),
            ("<result>4</result>", 0), ("<call>calculator(3+3)</call>", 1)],
    }
    for i, segments in expected.items():
        ids = [t for text, _ in segments for t in enc(text)]
        mask = [m for text, m in segments for _ in enc(text)]
        if i in (0, 1):  # these two end with eos; charlie stops at its unanswered call
            ids, mask = ids + [eos], mask + [1]
        assert row(rollout, i) == (ids, mask), f"episode {i}"
        assert prompt_row(rollout, i) == tok(["alpha", "bravo", "charlie"][i])["input_ids"]
        full = "".join(text for text, _ in segments)
        assert ids[: len(enc(full))] == enc(full)  # one-shot tokenization again
    assert env.backend.turns == {"alpha": 3, "bravo": 1, "charlie": 3}
    assert [len(contexts) for contexts, _ in env.backend.calls] == [3, 2, 2]  # finished episodes leave the batch
    assert rollout.completion_mask.sum(1).tolist() == [sum(m for t, m in s for _ in enc(t)) + (i < 2)
                                                       for i, s in expected.items()]


# --- 3. tool faults: an error text, and the episode goes on ------------------------------------------------------

def boom(argument: str) -> str:
    """Divides one by its argument."""
    return str(1 / int(argument))


FAULTS = [
    pytest.param({"boom": boom}, "<call>boom(0)</call>", "Error: ZeroDivisionError", id="tool-raises"),
    pytest.param({"python": PythonRunner(timeout=1)}, "<call>python(while True: pass)</call>", "timed out",
                 id="python-timeout", marks=posix_only),
    pytest.param({"python": PythonRunner(memory_mb=128)}, "<call>python(x = bytearray(2 * 1024**3))</call>",
                 "MemoryError", id="python-memory", marks=posix_only),
    pytest.param({"calculator": calculator}, "<call>calculator 2+3</call>", "malformed", id="malformed-call"),
    pytest.param({"calculator": calculator}, "<call>search(cats)</call>", "unknown tool", id="unknown-tool"),
]


@pytest.mark.parametrize("tools, call, fragment", FAULTS)
def test_tool_fault_becomes_error_text_and_the_episode_goes_on(model, tok, enc, tools, call, fragment):
    env = make_env(tok, {"question": [call, "Sorry, it failed."]}, tools=tools, max_tool_output_tokens=500,
                   max_tokens=1000)
    rollout = run(env, model, tok, ["question"])
    ids, mask = row(rollout, 0)
    call_ids, answer_ids = enc(call), enc("Sorry, it failed.") + [tok.eos_token_id]
    assert ids[: len(call_ids)] == call_ids and mask[: len(call_ids)] == [1] * len(call_ids)
    assert ids[-len(answer_ids):] == answer_ids and mask[-len(answer_ids):] == [1] * len(answer_ids)
    inserted = ids[len(call_ids): -len(answer_ids)]
    assert mask[len(call_ids): -len(answer_ids)] == [0] * len(inserted)
    text = tok.decode(inserted)
    assert text.startswith("<result>Error:") and text.endswith("</result>") and fragment in text, text
    assert len(env.backend.calls) == 2  # generation went on after the error


# --- 4. budgets ---------------------------------------------------------------------------------------------

def test_max_tokens_cuts_the_generated_answer(model, tok, enc):
    used = len(enc(CALL)) + len(enc(RESULT))
    env = make_env(tok, {"q": [CALL, "The answer is five, which the calculator said."]}, max_tokens=used + 4)
    rollout = run(env, model, tok, ["q"])
    ids, mask = row(rollout, 0)
    assert len(ids) == used + 4
    assert ids == enc(CALL) + enc(RESULT) + enc("The answer is five, which the calculator said.")[:4]
    assert mask == [1] * len(enc(CALL)) + [0] * len(enc(RESULT)) + [1] * 4
    assert [s.max_new_tokens for _, s in env.backend.calls] == [used + 4, 4]  # per turn: what is left


def test_max_tokens_cuts_the_tool_result_and_ends_the_episode(model, tok, enc):
    env = make_env(tok, {"q": [CALL, "never asked"]}, max_tokens=len(enc(CALL)) + 5)
    rollout = run(env, model, tok, ["q"])
    assert row(rollout, 0) == (enc(CALL) + enc(RESULT)[:5], [1] * len(enc(CALL)) + [0] * 5)
    assert len(env.backend.calls) == 1


def test_one_episodes_budget_does_not_cut_another(model, tok, enc):
    """max_tokens is per episode: an episode near its budget must not shorten its batch-mates' turns."""
    long_call = "<call>echo(" + "word " * 12 + ")</call>"
    tools = {"calculator": calculator, "echo": lambda text: text}
    long_used = len(enc(long_call)) + len(enc("<result>" + "word " * 12 + "</result>"))
    answer = "The answer is 5, as computed."
    short_used = len(enc(CALL)) + len(enc(RESULT))
    assert short_used + len(enc(answer)) + 1 < long_used + 3  # the answer fits only the short episode's budget
    env = make_env(tok, {"alpha": [long_call, "the echo was long indeed"], "bravo": [CALL, answer]}, tools=tools,
                   max_tokens=long_used + 3, max_tool_output_tokens=100)
    rollout = run(env, model, tok, ["alpha", "bravo"])
    ids, _ = row(rollout, 0)
    assert len(ids) == long_used + 3 and ids[long_used:] == enc("the echo was long indeed")[:3]
    ids, mask = row(rollout, 1)
    assert ids == enc(CALL) + enc(RESULT) + enc(answer) + [tok.eos_token_id]  # whole, with its eos
    assert sum(mask) == len(enc(CALL)) + len(enc(answer)) + 1


def test_long_tool_output_is_truncated_and_the_result_closed(model, tok, enc):
    long = "lorem ipsum dolor sit amet " * 10
    env = make_env(tok, {"q": ["<call>echo(" + long + ")</call>", "ok"]}, tools={"echo": lambda text: text},
                   max_tool_output_tokens=5, max_tokens=500, max_new_tokens=500)
    rollout = run(env, model, tok, ["q"])
    ids, mask = row(rollout, 0)
    call_ids, answer = enc("<call>echo(" + long + ")</call>"), enc("ok") + [tok.eos_token_id]
    assert ids[: len(call_ids)] == call_ids and mask[: len(call_ids)] == [1] * len(call_ids)
    assert ids[-len(answer):] == answer and mask[-len(answer):] == [1] * len(answer)  # the episode went on
    inserted = ids[len(call_ids): -len(answer)]
    assert inserted == enc("<result>" + tok.decode(enc(long)[:5]) + " [truncated]</result>")
    assert mask[len(call_ids): -len(answer)] == [0] * len(inserted)
    text = tok.decode(inserted)
    assert text.endswith(" [truncated]</result>") and len(enc(text)) < len(enc("<result>" + long + "</result>"))


# --- 5. the tokenizer's own tool-calling chat template ----------------------------------------------------------

@pytest.fixture(scope="module")
def tool_tok(tok):
    tool_tok = copy.deepcopy(tok)
    tool_tok.chat_template = TOOL_TEMPLATE
    return tool_tok


MESSAGES = [{"role": "user", "content": "What is 2+3?"}]


def test_chat_template_tool_call_inserts_a_rendered_tool_message(model, tool_tok):
    enc = lambda text: tool_tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    env = make_env(tool_tok, {"What is 2+3?": [HERMES, "The answer is 5."]})
    assert env.uses_chat_template(MESSAGES)
    rollout = run(env, model, tool_tok, [MESSAGES])
    tools = [env._schema("calculator", calculator)]
    prompt_text = tool_tok.apply_chat_template(MESSAGES, tools=tools, add_generation_prompt=True, tokenize=False)
    assert prompt_row(rollout, 0) == enc(prompt_text)
    assert '"name": "calculator"' in tool_tok.decode(prompt_row(rollout, 0))  # the tool listing is in the prompt

    ids, mask = row(rollout, 0)
    answer = enc("The answer is 5.") + [tool_tok.eos_token_id]
    assert ids[: len(enc(HERMES))] == enc(HERMES) and ids[-len(answer):] == answer
    inserted = ids[len(enc(HERMES)): -len(answer)]
    assert mask == [1] * len(enc(HERMES)) + [0] * len(inserted) + [1] * len(answer)
    # the whole episode is the template's rendering of the conversation with the call and the tool's answer
    conversation = MESSAGES + [{"role": "assistant", "content": HERMES}, {"role": "tool", "content": "5"}]
    rendered = tool_tok.apply_chat_template(conversation, tools=tools, add_generation_prompt=True, tokenize=False)
    assert tool_tok.decode(prompt_row(rollout, 0) + ids[: -len(answer)]) == rendered
    assert prompt_row(rollout, 0) + ids[: -len(answer)] == enc(rendered)
    assert "<|im_start|>tool\n5<|im_end|>\n<|im_start|>assistant\n" in tool_tok.decode(inserted)


def test_chat_template_malformed_tool_call_gets_an_error(model, tool_tok):
    enc = lambda text: tool_tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    bad = '<tool_call>{"name": "calculator", "arguments": </tool_call>'
    env = make_env(tool_tok, {"What is 2+3?": [bad, "Sorry."]}, max_tool_output_tokens=200, max_tokens=1000)
    rollout = run(env, model, tool_tok, [MESSAGES])
    ids, mask = row(rollout, 0)
    answer = enc("Sorry.") + [tool_tok.eos_token_id]
    assert ids[: len(enc(bad))] == enc(bad) and ids[-len(answer):] == answer
    inserted = ids[len(enc(bad)): -len(answer)]
    text = tool_tok.decode(inserted)
    assert "<|im_start|>tool\nError: malformed tool call" in text and "[truncated]" not in text
    # the malformed call is still the model's own text (mask 1); only the inserted tool turn is masked out
    assert mask == [1] * len(enc(bad)) + [0] * len(inserted) + [1] * len(answer)


def test_chat_prompt_without_tool_template_uses_the_plain_syntax(model, tok, enc):
    env = make_env(tok, {"What is 2+3?": [CALL, "5"]}, header=None)
    assert not env.uses_chat_template(MESSAGES)
    rollout = run(env, model, tok, [MESSAGES])
    system = [{"role": "system", "content": env.header}]
    assert prompt_row(rollout, 0) == enc(tok.apply_chat_template(system + MESSAGES, tokenize=False,
                                                                 add_generation_prompt=True))
    assert row(rollout, 0)[0] == enc(CALL) + enc(RESULT) + enc("5") + [tok.eos_token_id]


# --- 6. max_prompt_length: the prompt's end is kept, and the cut is counted ----------------------------------------

LONG = "word " * 20 + "alpha"  # the script key at the end survives the cut


@pytest.mark.parametrize("limit", [8, None])
def test_max_prompt_length_keeps_the_end_of_the_prompt(model, tok, enc, limit):
    env = make_env(tok, {"alpha": [CALL, "5"], "bravo": ["7"]}, header=None, max_prompt_length=limit)
    full = [tok(env.header + p)["input_ids"] for p in (LONG, "bravo")]  # the untruncated starting ids
    assert len(full[0]) > 8 and len(full[1]) > 8  # the default header (the tool list) makes both long
    rollout = run(env, model, tok, [LONG, "bravo"])
    expected = full if limit is None else [ids[-limit:] for ids in full]
    assert [prompt_row(rollout, i) for i in range(2)] == expected
    assert rollout.truncated_prompts == (0 if limit is None else 2)
    # the model generated from the kept ids too, not only the reported prompt_ids
    assert env.backend.calls[0][0] == expected
    assert env.backend.calls[1][0] == [expected[0] + enc(CALL) + enc(RESULT)]
    assert row(rollout, 0)[0] == enc(CALL) + enc(RESULT) + enc("5") + [tok.eos_token_id]
    assert rollout.rewards == {}  # no reward_funcs


def test_max_prompt_length_counts_only_the_prompts_it_cuts(model, tok):
    env = make_env(tok, {"alpha": ["5"], "bravo": ["7"]}, max_prompt_length=8)  # header "": "bravo" fits
    rollout = run(env, model, tok, [LONG, "bravo"])
    assert prompt_row(rollout, 0) == tok(LONG)["input_ids"][-8:]
    assert prompt_row(rollout, 1) == tok("bravo")["input_ids"] and len(tok("bravo")["input_ids"]) <= 8
    assert rollout.truncated_prompts == 1


def test_max_prompt_length_cuts_the_chat_template_prompt(model, tool_tok):
    enc = lambda text: tool_tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    env = make_env(tool_tok, {"What is 2+3?": [HERMES, "The answer is 5."]})
    full = env.prompt_ids(MESSAGES)
    limit = len(enc("What is 2+3?<|im_end|>\n<|im_start|>assistant\n")) + 2  # the tool listing is cut
    env.bind(tool_tok, env.sampling, max_prompt_length=limit)
    rollout = run(env, model, tool_tok, [MESSAGES])
    assert prompt_row(rollout, 0) == full[-limit:] and rollout.truncated_prompts == 1
    assert env.backend.calls[0][0] == [full[-limit:]]  # what the model was given
    assert '"name": "calculator"' not in tool_tok.decode(prompt_row(rollout, 0))
    assert "<|im_start|>tool\n5<|im_end|>" in tool_tok.decode(row(rollout, 0)[0])  # the episode still ran


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_max_prompt_length_must_be_a_positive_int(tok, bad):
    with pytest.raises(ValueError, match="max_prompt_length"):
        TextEnvironment([calculator]).bind(tok, SamplingConfig(), max_prompt_length=bad)


# --- 7. rewards the environment scores itself ---------------------------------------------------------------

def tool_use(prompts, completions, tool_calls, **kwargs):
    return [float(n) for n in tool_calls]


class Recorder:
    """A reward that takes keywords only (as TRL calls them), records them, and skips episodes without a call."""

    def __init__(self):
        self.seen = []

    def __call__(self, *, prompts, completions, completion_ids, tool_calls, tool_errors, answer, **kwargs):
        self.seen.append(dict(prompts=prompts, completions=completions, completion_ids=completion_ids,
                              tool_calls=tool_calls, tool_errors=tool_errors, answer=answer, **kwargs))
        return [None if n == 0 else 1.0 - e for n, e in zip(tool_calls, tool_errors)]


def test_reward_funcs_score_episodes_with_their_tool_calls(model, tok):
    scripts = {
        "alpha": [CALL, "<call>calculator(5*4)</call>", "20"],                      # two calls
        "bravo": ["7"],                                                             # none
        "charlie": ["<call>boom(0)</call>", "Sorry."],                              # one call, which fails
        "delta": ["<call>calculator(1+1)</call>", "<call>calculator(2+2)</call>",   # max_turns=2: the
                  "<call>calculator(3+3)</call>"],                                  # third call never runs
    }
    recorder = Recorder()
    env = make_env(tok, scripts, tools={"calculator": calculator, "boom": boom}, max_turns=2, max_tokens=200,
                   reward_funcs=[tool_use, recorder])
    prompts = ["alpha", "bravo", "charlie", "delta"]
    ids = [tok(p)["input_ids"] for p in prompts]
    rollout = env(model, ids, prompts, columns={"answer": ["20", "7", "1", "4"]}, with_logprobs=False)
    assert rollout.rewards == {"tool_use": [2.0, 0.0, 1.0, 2.0], "Recorder": [1.0, None, 0.0, 1.0]}
    (seen,) = recorder.seen
    completions = tok.batch_decode([row(rollout, i)[0] for i in range(4)], skip_special_tokens=True)
    assert seen == {"prompts": prompts, "completions": completions,
                    "completion_ids": [row(rollout, i)[0] for i in range(4)],
                    "tool_calls": [2, 0, 1, 2], "tool_errors": [0, 0, 1, 0], "answer": ["20", "7", "1", "4"]}
    assert completions[0] == CALL + RESULT + "<call>calculator(5*4)</call><result>20</result>20"  # tool output in
    assert completions[2].startswith("<call>boom(0)</call><result>Error: ZeroDivisionError")
    assert rollout.select([2, 0]).rewards == {"tool_use": [1.0, 2.0], "Recorder": [0.0, 1.0]}


def test_reward_funcs_get_conversational_completions_for_message_prompts(model, tool_tok):
    seen = []

    def calls(completions, tool_calls, **kwargs):
        seen.append(completions)
        return [float(n) for n in tool_calls]

    env = make_env(tool_tok, {"What is 2+3?": [HERMES, "The answer is 5."]}, reward_funcs=calls)
    rollout = run(env, model, tool_tok, [MESSAGES])
    text = tool_tok.decode(row(rollout, 0)[0], skip_special_tokens=True)
    assert "5" in text and text.endswith("The answer is 5.")
    assert seen == [[[{"role": "assistant", "content": text}]]] and rollout.rewards == {"calls": [1.0]}


def test_a_broken_environment_reward_is_a_clear_error(model, tok):
    env = make_env(tok, {"alpha": ["7"]}, reward_funcs=lambda completions, **kw: [1.0, 2.0])
    with pytest.raises(RewardError, match="2 values for 1 completions"):
        run(env, model, tok, ["alpha"])


def test_a_column_named_like_an_environment_keyword_is_refused(model, tok):
    env = make_env(tok, {"alpha": ["7"]}, reward_funcs=tool_use)
    with pytest.raises(ValueError, match="tool_calls"):
        env(model, [tok("alpha")["input_ids"]], ["alpha"], columns={"tool_calls": [[]]}, with_logprobs=False)


# --- 8. in a trainer ----------------------------------------------------------------------------------------

def test_unbound_environment_raises_a_clear_error(model, tok):
    env = TextEnvironment([calculator])
    with pytest.raises(RuntimeError, match="not bound to a tokenizer"):
        env(model, [tok("2+3=")["input_ids"]], ["2+3="])


def alternate(completions, **kwargs):
    """1, 0, 1, 0, ...: each group of 2 consecutive episodes gets one of each, whatever was sampled."""
    return [float(i % 2 == 0) for i in range(len(completions))]


def test_grpo_trains_with_the_environment(tmp_path):
    # The environment scores its own episodes (alternate), so every group has a reward spread by
    # construction and the update cannot be zero; final_answer is logged but weighs 0.
    env = TextEnvironment([calculator], header="", max_turns=2, max_tokens=24, reward_funcs=alternate)
    args = GRPOConfig(max_steps=2, per_device_train_batch_size=8, num_generations=2, max_completion_length=8,
                      disable_tqdm=True, output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.0,
                      reward_weights=[0.0], logging_steps=1, save_strategy="no", seed=0)
    trainer = GRPOTrainer("tiny:llama", ["final_answer"], args=args, train_dataset=toy.tool_problems(8),
                          rollout_source=env)
    assert trainer.sampler is env and env.tokenizer is trainer.tokenizer and env.sampling.max_new_tokens == 8
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    history = trainer.state.log_history
    assert [h["step"] for h in history] == [1, 2]
    for entry in history:
        assert entry["reward"] == 0.5 and entry["rewards/alternate"] == 0.5 and "rewards/final_answer" in entry
        assert entry["reward_std"] > 0
        assert 0 < entry["completion_length"] <= 24
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, trainer.model.parameters()))


class SolvesWithTheTool:
    """A backend for toy.tool_problems: first calls the calculator on the prompt's product, then copies the result."""

    def generate(self, model, prompt_ids, prompt_attention, sampling, tokenizer):
        rows = []
        for ids, att in zip(prompt_ids, prompt_attention):
            text = tokenizer.decode(ids[att.bool()].tolist())
            if "<result>" in text:
                reply = text[text.rfind("<result>") + 8: text.rfind("</result>")]
            else:
                reply = "<call>calculator(" + text[: text.index("=")] + ")</call>"
            out = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            rows.append(out[: sampling.max_new_tokens])
        width = max(map(len, rows))
        return torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])


def test_grpo_step_with_tool_output_in_the_rollouts(tmp_path):
    env = TextEnvironment([calculator], header="", max_turns=2, max_tokens=64)
    env.backend = SolvesWithTheTool()
    args = GRPOConfig(max_steps=1, per_device_train_batch_size=8, num_generations=2, max_completion_length=32,
                      disable_tqdm=True, output_dir=str(tmp_path), logging_steps=1, save_strategy="no")
    trainer = GRPOTrainer("tiny:llama", ["final_answer"], args=args, train_dataset=toy.tool_problems(8),
                          rollout_source=env)
    rollout = trainer.sample(trainer.next_prompts(), repeats=2)
    assert (rollout.completion_mask.sum(1) < rollout.completion_attention.sum(1)).all()  # tool tokens, mask 0
    texts = trainer.tokenizer.batch_decode(rollout.completion_lists(), skip_special_tokens=True)
    assert all(t.startswith("<call>calculator(") and "<result>" in t for t in texts)
    assert trainer.score(rollout).rewards.tolist() == [1.0] * len(texts)
    trainer.train()
    (entry,) = trainer.state.log_history
    assert entry["reward"] == 1.0 and math.isfinite(entry["loss"])


def test_ppo_step_with_tool_output_in_the_rollouts(tmp_path, monkeypatch):
    """PPO in an environment: the score lands on the last generated token, GAE skips the tool output."""
    import posttrain.trainers.ppo as ppo_module

    seen, real_gae = [], ppo_module.gae

    def recording_gae(rewards, values, mask, gamma, lam):
        out = real_gae(rewards, values, mask, gamma, lam)
        seen.append((rewards.clone(), values.clone(), mask.clone(), *out))
        return out

    monkeypatch.setattr(ppo_module, "gae", recording_gae)
    env = TextEnvironment([calculator], header="", max_turns=2, max_tokens=64)
    env.backend = SolvesWithTheTool()
    # one generation of 4 episodes, 2 micro-batches of 2, 4 epochs: 8 optimizer steps
    args = PPOConfig(max_steps=8, per_device_train_batch_size=2, steps_per_generation=2, max_completion_length=32,
                     disable_tqdm=True, output_dir=str(tmp_path), logging_steps=8, save_strategy="no")
    trainer = PPOTrainer("tiny:llama", ["final_answer"], args=args, train_dataset=toy.tool_problems(8),
                         rollout_source=env)
    trainer.train()
    (entry,) = trainer.state.log_history
    assert entry["reward"] == 1.0 and math.isfinite(entry["value_loss"]) and math.isfinite(entry["policy_loss"])
    (rewards, values, mask, advantages, _), = seen
    mask = mask.bool()
    assert (~mask).any(1).all()  # every episode has tool output (mask 0) between generated tokens
    for row in range(len(rewards)):
        generated = mask[row].nonzero().squeeze(-1)
        last = generated[-1]
        # the reference is a copy of the policy, so the KL part of the reward is 0: only the score is left,
        # on the last generated token
        assert rewards[row, last].item() == 1.0 and (rewards[row].nonzero().squeeze(-1) == last).all()
        assert (advantages[row][~mask[row]] == 0).all()
        # GAE over the generated tokens alone (tool output cut out) gives the same advantages: it skips it
        cut, _ = real_gae(rewards[row, generated][None], values[row, generated][None], torch.ones(1, len(generated)),
                          args.gamma, args.lam)
        assert torch.allclose(advantages[row, generated], cut[0], atol=1e-6)
