"""Reward functions: built-ins, RewardSet (weights, None, validation, errors), specs, reward-model scoring."""

import math
import sys

import pytest
import torch

from posttrain.data import toy
from posttrain.rewards import (BUILTIN_REWARDS, RewardError, RewardModelScorer, RewardSet, arithmetic, completion_text,
                               final_answer, length, regex, resolve_reward, sentiment)


def test_sentiment_is_positive_for_positive_text_and_negative_for_negative():
    pos, neg = sentiment(prompts=["", ""], completions=[f" {toy.POSITIVE[0]}. {toy.TAILS_POS[0]}",
                                                        f" {toy.NEGATIVE[0]}. {toy.TAILS_NEG[0]}"])
    assert 0 < pos <= 1 and -1 <= neg < 0


def test_length_regex_arithmetic_values():
    f = length(4)
    assert f(prompts=[""] * 4, completions=["a"] * 4,
             completion_ids=[[1] * 4, [1] * 2, [1] * 6, [1] * 9]) == [1.0, 0.5, 0.5, 0.0]
    with pytest.raises(ValueError, match="completion_ids"):
        f(prompts=[""], completions=["a"])
    with pytest.raises(ValueError, match="positive"):
        length(0)
    r = regex(r"^\d+$")
    assert r(prompts=["", "", ""], completions=["123", "12a", ""]) == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="invalid pattern"):
        regex("(unclosed")
    comps = ["19", " 19 is it", "-3", "3", "no number", "7+12=19", "19"]
    answers = ["19", 19, "-3", -3, "5", "19", None]
    assert arithmetic(prompts=[""] * 7, completions=comps, answer=answers) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, None]
    with pytest.raises(ValueError, match="'answer' column"):
        arithmetic(prompts=["1+1="], completions=["2"], completion_ids=[[5]])
    assert all(f.__name__ for f in (sentiment, length(3), regex("x"), arithmetic))


def _const(values, name):
    def fn(completions, **kwargs):
        return list(values)

    fn.__name__ = name
    return fn


def test_reward_set_weighted_sum_and_none_handling():
    a = _const([1.0, None, None, 2.0], "a")
    b = _const([0.5, 3.0, None, None], "b")
    result = RewardSet([a, b], weights=[2.0, -1.0])(["p"] * 4, ["c"] * 4, completion_ids=[[1]] * 4)
    assert result.rewards[0].item() == pytest.approx(2 * 1.0 - 0.5)
    assert result.rewards[1].item() == pytest.approx(-3.0)  # a's None counts 0
    assert math.isnan(result.rewards[2].item())  # every function returned None
    assert result.rewards[3].item() == pytest.approx(4.0)
    assert result.valid.tolist() == [True, True, False, True] and result.num_dropped == 1
    assert result.rewards.dtype == torch.float32 and set(result.per_function) == {"a", "b"}
    assert math.isnan(result.per_function["a"][1].item()) and result.per_function["b"][1].item() == 3.0
    assert result.metrics()["rewards/a"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="weights"):
        RewardSet([a, b], weights=[1.0])
    assert RewardSet([regex("x"), regex("y")]).names == ["regex", "regex_2"]


def test_raising_function_names_itself_and_the_sample():
    calls = []

    def picky(completions, answer, completion_ids, trainer_state, **kwargs):
        calls.append((list(completions), list(answer), list(completion_ids), trainer_state, sorted(kwargs)))
        return [1.0 / (0 if c == "bad" else 1) for c in completions]

    prompts, comps = ["p0", "p1", "p2", "p3"], ["ok", "ok", "bad", "ok"]
    state = object()
    with pytest.raises(RewardError, match=r"'picky' raised on sample 2.*'p2'.*'bad'.*ZeroDivisionError") as info:
        RewardSet([picky])(prompts, comps, completion_ids=[[0], [1], [2], [3]], trainer_state=state,
                           answer=["a0", "a1", "a2", "a3"])
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    # the batch call, then one call per sample up to the failing one: every column sliced to that sample,
    # trainer_state passed unchanged, all by keyword
    assert len(calls) == 4 and calls[0] == (comps, ["a0", "a1", "a2", "a3"], [[0], [1], [2], [3]], state, ["prompts"])
    assert calls[1:] == [([comps[i]], [f"a{i}"], [[i]], state, ["prompts"]) for i in range(3)]


def test_bad_outputs_are_reward_errors():
    with pytest.raises(RewardError, match="'short'.*2 values for 3"):
        RewardSet([_const([1.0, 2.0], "short")])(["p"] * 3, ["c"] * 3)
    with pytest.raises(RewardError, match="'nan'.*sample 1.*finite"):
        RewardSet([_const([1.0, float("nan"), 0.0], "nan")])(["p"] * 3, ["c"] * 3)
    with pytest.raises(RewardError, match="'inf'.*finite"):
        RewardSet([_const([float("inf")] * 3, "inf")])(["p"] * 3, ["c"] * 3)
    with pytest.raises(RewardError, match="'text'.*sample 0"):
        RewardSet([_const(["1.0", 1.0, 1.0], "text")])(["p"] * 3, ["c"] * 3)
    with pytest.raises(RewardError, match="arithmetic.*sample 0.*'answer' column"):
        RewardSet(["arithmetic"])(["1+1="], ["2"])


def test_resolve_builtin_and_import_specs(tmp_path, monkeypatch):
    assert resolve_reward("sentiment") is sentiment and resolve_reward("arithmetic") is arithmetic
    assert resolve_reward("length:20").target == 20
    assert resolve_reward(r"regex:^\d+").pattern.pattern == r"^\d+"
    assert resolve_reward("regex:a:b").pattern.pattern == "a:b"
    assert set(BUILTIN_REWARDS) == {"sentiment", "toxicity", "non_toxic", "length", "regex", "arithmetic", "final_answer"}
    (tmp_path / "my_rewards_mod.py").write_text(
        "def shout(completions, **kwargs):\n    return [float(c.isupper()) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = resolve_reward("my_rewards_mod:shout")
    assert fn(prompts=["", ""], completions=["HEY", "hey"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="no module named 'no_such_reward_mod'"):
        resolve_reward("no_such_reward_mod:f")
    with pytest.raises(ValueError, match="no attribute 'missing'"):
        resolve_reward("my_rewards_mod:missing")
    for bad in ("nonsense", "length:abc", "length", "sentiment:3", "regex:(", str(tmp_path)):
        with pytest.raises(ValueError):
            resolve_reward(bad)
    with pytest.raises(ValueError, match="Valid forms.*sentiment.*package.module:function.*config.json"):
        resolve_reward("nonsense")
    # TRL's spelling: a dotted path to the function
    assert resolve_reward("my_rewards_mod.shout") is fn
    with pytest.raises(ValueError, match="no attribute 'missing'"):
        resolve_reward("my_rewards_mod.missing")
    with pytest.raises(ValueError, match="no module named 'no_such_reward_mod'"):
        resolve_reward("no_such_reward_mod.sub.f")
    sys.modules.pop("my_rewards_mod", None)


def test_resolve_trl_reward_names():
    """The names TRL's GRPO/RLOO scripts take for trl.rewards functions resolve to those functions."""
    trl_rewards = pytest.importorskip("trl.rewards")
    assert resolve_reward("think_format_reward") is trl_rewards.think_format_reward
    assert resolve_reward("trl.rewards.think_format_reward") is trl_rewards.think_format_reward
    punish = resolve_reward("get_soft_overlong_punishment")  # built as TRL's script builds it: 1280 / 256
    assert punish(completion_ids=[[0] * 1000, [0] * 1280]) == [0.0, pytest.approx(-1.0)]


def test_reward_model_directory_scores_like_a_manual_forward(tmp_path):
    from posttrain.models.loading import load_model, load_tokenizer

    model, tok = load_model("tiny:llama", "seq-cls", seed=0), load_tokenizer("tiny:llama")
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    scorer = resolve_reward(str(tmp_path / "rm"))
    assert isinstance(scorer, RewardModelScorer) and scorer.__name__ == "reward_model"
    scorer.batch_size = 2  # several batches, with padding inside them
    chat = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "How was the film?"}]
    prompts = ["I went to see the film and", chat, "Honestly, the plot", chat, "Two hours later,"]
    comps = [" it was wonderful.", "Loved it.", " was a mess from start to finish. Skip it.", "Awful.", ""]
    scores = scorer(prompts=prompts, completions=comps, completion_ids=[[1]] * 5)
    expected = [
        tok("I went to see the film and")["input_ids"] + tok(" it was wonderful." + tok.eos_token,
                                                             add_special_tokens=False)["input_ids"],
        tok(tok.apply_chat_template(chat + [{"role": "assistant", "content": "Loved it."}], tokenize=False),
            add_special_tokens=False)["input_ids"],
    ]
    assert scorer.tokenize(prompts[0], comps[0]) == expected[0]
    assert scorer.tokenize(prompts[1], comps[1]) == expected[1]
    with torch.no_grad():
        for i in range(5):
            ids = torch.tensor([scorer.tokenize(prompts[i], comps[i])])
            manual = scorer.model(input_ids=ids).logits[0, 0].item()
            assert scores[i] == pytest.approx(manual, abs=1e-6)
        assert scores[0] == pytest.approx(model(input_ids=torch.tensor([expected[0]])).logits[0, 0].item(), abs=1e-6)
    assert len(set(scores)) == 5
    # TRL's conversational completions (message lists) score the same as their text, for chat prompts
    # (kept as the assistant turn) and for plain-text prompts (their text is used); through RewardSet too
    as_messages = [[{"role": "assistant", "content": c}] for c in comps]
    assert scorer(prompts=prompts, completions=as_messages) == pytest.approx(scores, abs=1e-6)
    result = RewardSet([scorer])(prompts, as_messages, completion_ids=[[1]] * 5)
    assert result.per_function["reward_model"].tolist() == pytest.approx(scores, abs=1e-5)
    # truncation keeps the prompt and cuts the completion to fit max_length
    short = RewardModelScorer(scorer.model, tok, max_length=8)
    assert len(short.tokenize(prompts[2], comps[2])) == 8


def test_final_answer_reads_the_text_after_the_last_tool_result():
    completions = ["<call>calculator(6*7)</call><result>42</result>42",
                   "<call>calculator(6*7)</call><result>42</result>",
                   "<call>calculator(6*7)</call><result>42</result> it is 41", "42", "no tools: 41"]
    assert final_answer(prompts=[""] * 5, completions=completions, answer=["42"] * 5) == [1.0, 0.0, 0.0, 1.0, 0.0]
    # conversational: the tool result is its own message; the answer is the last assistant message
    call = {"role": "assistant", "content": "<call>calculator(6*7)</call>"}
    tool = {"role": "tool", "content": "42"}
    chats = [[call, tool, {"role": "assistant", "content": "42"}], [call, tool, {"role": "assistant", "content": "41"}]]
    assert final_answer(prompts=[[]] * 2, completions=chats, answer=["42"] * 2) == [1.0, 0.0]


# ---- keyword calls (TRL's contract) ----------------------------------------------------------------


PROMPTS = ["a much longer prompt than any completion", "another long prompt, also longer"]
COMPLETIONS = ["abc", "defgh"]


def test_completions_first_function_scores_the_completions_not_the_prompts():
    def chars(completions, **kwargs):
        return [float(len(c)) for c in completions]

    result = RewardSet([chars])(PROMPTS, COMPLETIONS)
    assert result.per_function["chars"].tolist() == [3.0, 5.0]  # len of each completion, not of the prompts
    assert result.rewards.tolist() == [3.0, 5.0]


def test_function_with_completions_then_prompts_gets_each_by_name():
    seen = {}

    def g(completions, prompts, **kwargs):
        seen.update(completions=completions, prompts=prompts, extra=sorted(kwargs))
        return [0.0] * len(completions)

    RewardSet([g])(PROMPTS, COMPLETIONS)
    assert seen == {"completions": COMPLETIONS, "prompts": PROMPTS, "extra": []}


def test_columns_completion_ids_and_trainer_state_arrive():
    from transformers import TrainerState

    seen = {}

    def check(prompts, completions, answer, completion_ids, trainer_state, **kwargs):
        seen.update(answer=answer, completion_ids=completion_ids, trainer_state=trainer_state, kwargs=kwargs)
        return [float(trainer_state.global_step)] * len(completions)

    state = TrainerState(global_step=7)
    result = RewardSet([check])(PROMPTS, COMPLETIONS, completion_ids=[[1, 2], [3]], trainer_state=state,
                                answer=["4", None], source=["x", "y"])
    assert seen["answer"] == ["4", None] and seen["completion_ids"] == [[1, 2], [3]]
    assert seen["trainer_state"] is state and seen["kwargs"] == {"source": ["x", "y"]}
    assert result.rewards.tolist() == [7.0, 7.0]
    # neither is passed when not given (so a function's own default applies)
    RewardSet([lambda completions, **kw: seen.update(bare=sorted(kw)) or [0.0, 0.0]])(PROMPTS, COMPLETIONS)
    assert seen["bare"] == ["prompts"]
    with pytest.raises(ValueError, match="'completion_ids' has 1 values for 2"):
        RewardSet([check])(PROMPTS, COMPLETIONS, completion_ids=[[1]])
    with pytest.raises(ValueError, match="'answer' has 3 values for 2"):
        RewardSet([check])(PROMPTS, COMPLETIONS, answer=["1", "2", "3"])


def test_precomputed_rewards_add_with_weight_one_and_are_logged():
    a = _const([1.0, None, None, 2.0], "a")
    rs = RewardSet([a], weights=[2.0])
    result = rs(["p"] * 4, ["c"] * 4, precomputed={"tool": [0.5, 3.0, None, None], "a": [10.0, None, None, 0.0]})
    assert result.rewards[0].item() == pytest.approx(2 * 1.0 + 0.5 + 10.0)
    assert result.rewards[1].item() == pytest.approx(3.0)  # a's None counts 0
    assert math.isnan(result.rewards[2].item()) and result.valid.tolist() == [True, True, False, True]
    assert result.rewards[3].item() == pytest.approx(4.0) and result.num_dropped == 1
    assert list(result.per_function) == ["a", "tool", "env/a"]  # a clash with a function's name gets env/
    assert result.per_function["tool"][0].item() == 0.5 and math.isnan(result.per_function["tool"][2].item())
    assert result.per_function["env/a"][0].item() == 10.0 and result.per_function["a"][0].item() == 1.0
    assert result.metrics()["rewards/tool"] == pytest.approx(1.75)
    # precomputed alone makes a sample valid; validated like a function's output
    b = RewardSet([_const([None, None], "b")])
    assert b(["p"] * 2, ["c"] * 2, precomputed={"tool": [1.0, None]}).valid.tolist() == [True, False]
    with pytest.raises(RewardError, match="Precomputed reward 'tool'.*sample 1.*finite"):
        b(["p"] * 2, ["c"] * 2, precomputed={"tool": [1.0, float("nan")]})
    with pytest.raises(RewardError, match="Precomputed reward 'tool'.*1 values for 2"):
        b(["p"] * 2, ["c"] * 2, precomputed={"tool": [1.0]})
    with pytest.raises(RewardError, match="Precomputed reward 'tool'.*sample 0"):
        b(["p"] * 2, ["c"] * 2, precomputed={"tool": ["1", 1.0]})
    with pytest.raises(ValueError, match="precomputed must be a dict"):
        b(["p"] * 2, ["c"] * 2, precomputed=[1.0, 1.0])


def test_completion_text():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "hi"}]) == "hi"
    msgs = [{"role": "assistant", "content": "call"}, {"role": "tool", "content": "42"},
            {"role": "assistant", "content": "it is 42"}]
    assert completion_text(msgs) == "it is 42"
    assert completion_text([{"role": "assistant", "content": None, "tool_calls": []}]) == ""
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"},
                                                              {"type": "text", "text": "b"}]}]) == "ab"
    with pytest.raises(ValueError, match="no assistant message"):
        completion_text([{"role": "user", "content": "x"}])
    with pytest.raises(TypeError, match="string or a list of chat messages"):
        completion_text(42)


@pytest.mark.parametrize("name", sorted(BUILTIN_REWARDS))
def test_every_builtin_scores_message_completions_like_their_text(name):
    if name in ("toxicity", "non_toxic"):
        pytest.importorskip("profanity_check")  # the optional posttrain[toxicity]
    spec = {"length": "length:3", "regex": r"regex:\d+"}.get(name, name)
    texts = [f" {toy.POSITIVE[0]}. 42 it is", f" {toy.NEGATIVE[0]}.", "<call>c(6*7)</call><result>42</result>42", "-3"]
    as_messages = [[{"role": "assistant", "content": t}] for t in texts]
    chats = [[{"role": "user", "content": "q"}]] * 4
    columns = {"completion_ids": [[1] * 3, [1] * 2, [1] * 9, [1]], "answer": ["42", "1", "42", -3]}
    fn = resolve_reward(spec)
    plain = fn(prompts=[""] * 4, completions=texts, **columns)
    assert fn(prompts=chats, completions=as_messages, **columns) == plain
    assert len(set(plain)) > 1  # the texts differ in score, so a wrong text would show
    result = RewardSet([spec])(chats, as_messages, **columns)
    assert result.per_function[name].tolist() == pytest.approx(plain)


def test_toxicity_rewards_score_offensive_text_high_and_clean_text_low():
    pytest.importorskip("profanity_check")  # posttrain[toxicity]
    from posttrain.rewards import non_toxic, resolve_reward, toxicity

    texts = ["have a lovely day", "you are a stupid idiot", "the weather is nice", "damn this shit"]
    scores = toxicity(prompts=[""] * 4, completions=texts)
    assert scores[1] > 0.9 and scores[3] > 0.9 and scores[0] < 0.2 and scores[2] < 0.2
    assert non_toxic(prompts=[""] * 4, completions=texts) == pytest.approx([1 - s for s in scores])
    assert resolve_reward("non_toxic") is non_toxic
    messages = [[{"role": "assistant", "content": t}] for t in texts]  # TRL's conversational completions
    assert toxicity(prompts=[""] * 4, completions=messages) == pytest.approx(scores)


def test_toxicity_reward_without_the_classifier_says_how_to_install_it(monkeypatch):
    import builtins

    from posttrain.rewards import toxicity

    real_import = builtins.__import__

    def no_classifier(name, *args, **kwargs):
        if name == "profanity_check":
            raise ImportError("No module named 'profanity_check'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_classifier)
    with pytest.raises(ImportError, match=r"pip install 'posttrain\[toxicity\]'"):
        toxicity(prompts=["x"], completions=["y"])
