"""Judges (posttrain/eval/judges.py): verdicts in both orders, the LLM judge's log-prob verdict by hand, reward
model judges, win-rate interval coverage and Bradley-Terry ratings recovering a known ordering."""

import math
import random

import pytest
import torch

from posttrain import load_model, load_tokenizer
from posttrain.eval.judges import (LLMJudge, RewardModelJudge, RuleJudge, WinRateCallback, bradley_terry,
                                   compare_models, rating_intervals, win_rate)

PROMPTS = ["Say something nice.", "Count to three.", "Name a colour."]
PAIRS = [["lovely day", "bad"], ["one", "one two three"], ["red", "red"]]


def test_rule_judge_verdicts_do_not_depend_on_the_order_shown():
    judge = RuleJudge(lambda prompt, completion: len(completion))
    assert judge.score(PROMPTS, ["ab", "abc", ""]) == [2.0, 3.0, 0.0]
    for shuffle in (False, True):
        for seed in range(5):
            assert judge.judge(PROMPTS, PAIRS, shuffle_order=shuffle, seed=seed) == [0, 1, -1]  # -1: a tie
            assert judge.judge(PROMPTS, PAIRS, shuffle_order=shuffle, return_scores=True, seed=seed) == [1.0, 0.0, 0.5]
    swapped = [pair[::-1] for pair in PAIRS]
    assert judge.judge(PROMPTS, swapped, shuffle_order=False) == [1, 0, -1]
    with pytest.raises(ValueError, match="one pair of completions per prompt"):
        judge.judge(PROMPTS, [["a", "b", "c"]] * 3)


def test_llm_judge_reads_the_verdict_from_the_answer_tokens_in_both_orders():
    tokenizer, model = load_tokenizer("tiny:llama"), load_model("tiny:llama", seed=3).eval()
    template = "Question: {prompt}\nAnswer 1: {first}\nAnswer 2: {second}\nThe better answer is"
    choices = (" 1", " 2")  # one token each in the tiny tokenizer (" B" is two)
    judge = LLMJudge(model, tokenizer, template=template, choices=choices)
    a_id, b_id = (tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in choices)

    def by_hand(prompt, first, second):
        ids = tokenizer(judge.template.format(prompt=prompt, first=first, second=second),
                        add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        return (math.exp(logits[a_id]) / (math.exp(logits[a_id]) + math.exp(logits[b_id])))

    expected = [(by_hand(p, a, b) + 1 - by_hand(p, b, a)) / 2 for p, (a, b) in zip(PROMPTS, PAIRS)]
    got = judge.judge(PROMPTS, PAIRS, shuffle_order=False, return_scores=True)
    assert got == pytest.approx(expected, abs=1e-5)
    # position-swap debiasing: showing the pair the other way round gives exactly 1 - p
    flipped = judge.judge(PROMPTS, [pair[::-1] for pair in PAIRS], shuffle_order=False, return_scores=True)
    assert [1 - p for p in flipped] == pytest.approx(got, abs=1e-6)
    assert judge.judge(PROMPTS, PAIRS, shuffle_order=True, return_scores=True) == pytest.approx(got, abs=1e-6)
    one_order = LLMJudge(model, tokenizer, template, choices, swap=False).judge(PROMPTS, PAIRS, shuffle_order=False, return_scores=True)
    assert one_order == pytest.approx([by_hand(p, a, b) for p, (a, b) in zip(PROMPTS, PAIRS)], abs=1e-5)
    with pytest.raises(ValueError, match="one distinct token each"):
        LLMJudge(model, tokenizer, choices=(" A", " B"))  # " B" is two tokens here
    with pytest.raises(ValueError, match="must contain \\{second\\}"):
        LLMJudge(model, tokenizer, template="{prompt} {first}", choices=choices)


def test_reward_model_judge_is_the_bradley_terry_probability_of_its_scores():
    tokenizer = load_tokenizer("tiny:llama")
    judge = RewardModelJudge(load_model("tiny:llama", "seq-cls", seed=2), tokenizer)
    firsts, seconds = judge.score(PROMPTS, [p[0] for p in PAIRS]), judge.score(PROMPTS, [p[1] for p in PAIRS])
    got = judge.judge(PROMPTS, PAIRS, shuffle_order=True, return_scores=True)
    assert got == pytest.approx([1 / (1 + math.exp(b - a)) for a, b in zip(firsts, seconds)], abs=1e-6)
    assert judge.judge(PROMPTS, PAIRS) == [0 if a > b else 1 for a, b in zip(firsts, seconds)][:2] + [-1]


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_win_rate_interval_has_its_stated_coverage(p):
    rng, n, trials = random.Random(0), 60, 2000
    covered = 0
    for _ in range(trials):
        result = win_rate([1.0 if rng.random() < p else 0.0 for _ in range(n)])
        covered += result.low <= p <= result.high
    assert 0.92 <= covered / trials <= 0.98, covered / trials
    assert win_rate([1, 1, 0, 0.5]).rate == pytest.approx(0.625)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        win_rate([2.0])


def test_bradley_terry_recovers_a_known_ordering_with_intervals_covering_it():
    truth = [1200.0, 1100.0, 950.0, 750.0]  # mean 1000, as the fitted ratings are centred
    rng, comparisons = random.Random(1), []
    for _ in range(1200):
        i, j = rng.sample(range(4), 2)
        p = 1 / (1 + 10 ** ((truth[j] - truth[i]) / 400))
        comparisons.append((i, j, 1.0 if rng.random() < p else 0.0))
    ratings = bradley_terry(comparisons, 4)
    assert sorted(range(4), key=lambda k: -ratings[k]) == [0, 1, 2, 3]
    intervals = rating_intervals(comparisons, 4, samples=100)
    for true, (low, high) in zip(truth, intervals):
        assert low <= true <= high, (true, low, high)
    assert bradley_terry([(0, 1, 1.0)] * 5, 2)[0] < 2000  # a model that never lost stays finite


def test_compare_models_gives_win_rates_and_ratings_in_the_judges_order():
    prompts = [f"p{i}" for i in range(40)]
    completions = {"short": ["a"] * 40, "medium": ["abc"] * 40, "long": ["abcdef"] * 40}
    result = compare_models(completions, prompts, RuleJudge(lambda p, c: len(c)), baseline="short")
    assert result["win_rates"]["long"].rate == 1.0 and result["win_rates"]["medium"].rate == 1.0
    ratings = {k: v[0] for k, v in result["ratings"].items()}
    assert ratings["long"] > ratings["medium"] > ratings["short"]
    assert result["table"].splitlines()[2].startswith("| long |")
    with pytest.raises(ValueError, match="baseline 'x' is not one of"):
        compare_models(completions, prompts, RuleJudge(len), baseline="x")


def test_win_rate_callback_logs_the_win_rate_against_the_starting_model(tmp_path):
    from posttrain import GRPOConfig, GRPOTrainer
    from posttrain.data import toy

    rows = toy.arithmetic_problems(16, seed=0)
    args = GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=4, report_to="none", disable_tqdm=True, save_strategy="no")
    trainer = GRPOTrainer("tiny:llama", lambda completions, **kw: [0.0] * len(completions), args=args,
                          train_dataset=rows, eval_dataset=rows[:6])
    callback = WinRateCallback(RuleJudge(lambda prompt, completion: len(completion)), trainer, use_soft_judge=True)
    trainer.add_callback(callback)
    assert len(callback.prompts) == 6
    callback.on_train_begin(args, trainer.state, trainer.control)
    same = list(callback.reference)
    trainer.evaluate()  # nothing trained: the same samples, every pair a tie
    logged = [e for e in trainer.state.log_history if "eval_win_rate" in e]
    assert logged[-1]["eval_win_rate"] == 0.0 and logged[-1]["eval_avg_win_prob"] == 0.5
    callback.reference = [""] * 6  # a starting model that said nothing: every longer completion wins
    trainer.evaluate()
    logged = [e for e in trainer.state.log_history if "eval_win_rate" in e]
    assert logged[-1]["eval_win_rate"] == sum(len(c) > 0 for c in same) / 6


def test_posttrain_judge_command_writes_win_rates_ratings_and_a_plot(tmp_path, capsys, monkeypatch):
    import json

    (tmp_path / "judge_rules.py").write_text("def chars(prompts, completions, **kw):\n"
                                              "    return [len(c) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from posttrain.cli import main

    for seed in (0, 1):
        load_model("tiny:llama", seed=seed).save_pretrained(tmp_path / f"m{seed}")
        load_tokenizer("tiny:llama").save_pretrained(tmp_path / f"m{seed}")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about {w}."}) + "\n" for w in ["cats", "rain", "tea"]))
    out = tmp_path / "judged"
    for judge in ("judge_rules:chars", f"llm={tmp_path / 'm0'}"):
        assert main(["judge", "--models", f"base={tmp_path / 'm0'}", f"other={tmp_path / 'm1'}", "--prompts",
                     str(prompts), "--judge", judge, "--choices", " 1", " 2", "--max_new_tokens", "6",
                     "--output_dir", str(out)]) == 0
        result = json.loads((out / "judge.json").read_text())
        assert set(result["ratings"]) == {"base", "other"} and result["win_rates"]["other"]["n"] == 3
        assert (out / "ratings.png").stat().st_size > 0 and "| other |" in (out / "judge.md").read_text()
    printed = capsys.readouterr().out
    assert "win rate vs base" in printed
    with pytest.raises(SystemExit):
        main(["judge", "--models", str(tmp_path / "m0"), "--prompts", str(prompts), "--judge", "judge_rules:chars"])


# ---- the API judge: a fake OpenAI-compatible server on 127.0.0.1 and injected transports (no network) ----------

# canned top log-probs of the first token, by which answer is shown first (a position bias: "A" is favoured)
FIRST_SHOWN = {"good": {"A": -0.2, "B": -1.9, "C": -4.0}, "bad": {"A": -1.5, " B": -0.4, "Z": -3.0}}


def _softmax_first(logprobs):
    a, b = logprobs.get("A", logprobs.get(" A")), logprobs.get("B", logprobs.get(" B"))
    return math.exp(a) / (math.exp(a) + math.exp(b))


def _chat_response(top=None, text="A"):
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length",
              "logprobs": None}
    if top is not None:
        best = max(top, key=top.get)
        choice["logprobs"] = {"content": [{"token": best, "logprob": top[best], "top_logprobs": [
            {"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in top.items()]}]}
    return {"id": "chatcmpl-1", "object": "chat.completion", "choices": [choice]}


@pytest.fixture(scope="module")
def fake_api():
    """A chat-completions server: the verdict depends on the answer shown first; the model name picks a failure."""
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, dict(self.headers), payload))
            model, status = payload["model"], 200
            if model == "boom":  # echoes the credential, which the error must not repeat
                status, body = 500, {"error": {"message": f"boom for {self.headers.get('Authorization')}"}}
            elif model == "malformed":
                body = {"id": "x", "object": "chat.completion"}
            elif model == "text-only":
                body = _chat_response(None, text=" B")
            elif model == "slow":
                time.sleep(0.6)
                body = _chat_response(None)
            else:
                user = payload["messages"][-1]["content"]
                first = "good" if "Answer A: good" in user else "bad"
                body = _chat_response(FIRST_SHOWN[first])
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):  # the "slow" client hangs up: not a test failure
            pass

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()
    server.server_close()


def test_api_judge_reads_the_verdict_from_the_top_logprobs_in_both_orders(fake_api, monkeypatch):
    from posttrain.eval.api_judge import APIJudge

    base_url, seen = fake_api
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123456")
    prompts, pairs = ["Pick one.", "And again."], [["good", "bad"], ["bad", "good"]]
    judge = APIJudge("judge-model", base_url=base_url, max_workers=4)
    assert judge.url == base_url + "/chat/completions"
    p, q = _softmax_first(FIRST_SHOWN["good"]), _softmax_first(FIRST_SHOWN["bad"])  # p(first) shown each way
    assert judge.first_probability(prompts, pairs) == pytest.approx([p, q], abs=1e-12)
    del seen[:]
    got = judge.judge(prompts, pairs, shuffle_order=False, return_scores=True)
    assert got == pytest.approx([(p + 1 - q) / 2, (q + 1 - p) / 2], abs=1e-12)  # position-swap average
    assert got[0] + got[1] == pytest.approx(1.0) and got[0] > 0.5
    assert judge.judge(prompts, pairs, shuffle_order=True, seed=1) == [0, 1]
    assert judge.num_requests == 2 + 4 + 4
    path, headers, payload = seen[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-test-123456"
    assert headers["Content-Type"] == "application/json"
    assert payload["model"] == "judge-model" and payload["max_tokens"] == 1 and payload["logprobs"] is True
    assert payload["top_logprobs"] == 20 and payload["temperature"] == 0
    assert payload["messages"] == [{"role": "user", "content": payload["messages"][-1]["content"]}]
    asked = sorted(s[2]["messages"][-1]["content"].split("\n")[1] for s in seen[:4])  # requests run in parallel
    assert asked == ["Question: And again."] * 2 + ["Question: Pick one."] * 2
    shown_first = sorted("Answer A: good" in s[2]["messages"][-1]["content"] for s in seen[:4])
    assert shown_first == [False, False, True, True]  # every pair asked both ways
    one_order = APIJudge("judge-model", base_url=base_url, swap=False, max_workers=1)
    assert one_order.judge(prompts, pairs, shuffle_order=False, return_scores=True) == pytest.approx([p, q])
    monkeypatch.delenv("OPENAI_API_KEY")
    del seen[:]
    one_order.first_probability(prompts[:1], pairs[:1])
    assert "Authorization" not in seen[0][1]  # no key in the environment: none sent


def test_api_judge_errors_name_the_url_and_never_the_key(fake_api, monkeypatch):
    from posttrain.eval.api_judge import APIJudge

    base_url, _ = fake_api
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-secret-987654")
    url = base_url + "/chat/completions"
    with pytest.raises(RuntimeError, match="HTTP 500") as err:
        APIJudge("boom", base_url=base_url, api_key_env="MY_JUDGE_KEY").judge(["q"], [["a", "b"]])
    message = str(err.value)
    assert url in message and "sk-secret-987654" not in message and "\n" not in message
    with pytest.raises(RuntimeError, match="malformed.*no 'choices' list") as err:
        APIJudge("malformed", base_url=base_url).judge(["q"], [["a", "b"]])
    assert url in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(RuntimeError, match="no response within the 0.2 s timeout"):
        APIJudge("slow", base_url=base_url, timeout=0.2, swap=False).judge(["q"], [["a", "b"]])
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    with pytest.raises(RuntimeError, match=f"POST {closed}/chat/completions failed"):
        APIJudge("m", base_url=closed, swap=False).judge(["q"], [["a", "b"]])


def test_api_judge_falls_back_to_the_reply_text_without_logprobs(fake_api):
    from posttrain.eval.api_judge import APIJudge

    base_url, _ = fake_api
    judge = APIJudge("text-only", base_url=base_url, swap=False)  # replies " B": the second is better, hard
    assert judge.judge(["q", "r"], [["a", "b"], ["c", "d"]], shuffle_order=False, return_scores=True) == [0.0, 0.0]
    assert APIJudge("text-only", base_url=base_url).judge(["q"], [["a", "b"]], return_scores=True) == [0.5]
    read = APIJudge("m", transport=lambda *a: None).read_verdict
    assert read(_chat_response(None, text="A")) == 1.0 and read(_chat_response(None, text="neither")) == 0.5
    assert read(_chat_response({"Hmm": -0.1, "Well": -2.0}, text="Hmm")) == 0.5  # neither choice in the top
    assert read(_chat_response({"A": -0.3}, text="A")) == 1.0  # B not in the top: probability 0
    both = read(_chat_response({"A": -1.0, " A": -1.0, "B": -1.0}))  # "A" and " A" are one choice: 2/3
    assert both == pytest.approx(2 / 3)
    legacy = {"choices": [{"text": "B", "logprobs": {"tokens": ["B"], "top_logprobs": [{"B": -0.5, "A": -1.0}]}}]}
    assert read(legacy) == pytest.approx(1 / (1 + math.exp(0.5)))
    for bad, what in [({"choices": [{"logprobs": {"content": [{"top_logprobs": "x"}]}}]}, "'logprobs' is neither"),
                      ({"choices": [{"message": {"content": None}}]}, "neither 'logprobs' nor a reply text"),
                      ({"error": {"message": "quota"}}, "no 'choices' list.*error: quota"), ([], "no 'choices'")]:
        with pytest.raises(RuntimeError, match=what):
            read(bad)


def test_api_judge_with_an_injected_transport_trl_arguments_and_max_requests(monkeypatch):
    from posttrain.eval.api_judge import APIJudge, OpenAIPairwiseJudge
    from posttrain.eval.judges import make_judge

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    calls = []

    def transport(url, payload, headers):  # prefers the longer answer, whichever label it has
        calls.append((url, payload, headers))
        user = payload["messages"][-1]["content"]
        first, second = user.split('"""')[1], user.split('"""')[3]
        return _chat_response({"0": -0.1, "1": -2.5} if len(first) > len(second) else {"0": -2.5, "1": -0.1})

    trl_prompt = ('Instruction: {{ "{prompt}" }}\nModel 0: """{response0}"""\nModel 1: """{response1}"""\n'
                  "Reply with 0 or 1.")
    judge = OpenAIPairwiseJudge("gpt-x", trl_prompt, 6, choices=("0", "1"), transport=transport, max_workers=1)
    assert OpenAIPairwiseJudge is APIJudge and judge.url == "https://api.openai.com/v1/chat/completions"
    p = 1 / (1 + math.exp(-2.4))
    got = judge.judge(PROMPTS, [["long answer", "short"], ["a", "abc"], ["xy", "zw"]], return_scores=True)
    assert got[:2] == pytest.approx([p, 1 - p]) and judge.num_requests == 6
    url, payload, headers = calls[0]
    assert headers == {} and payload["model"] == "gpt-x" and len(payload["messages"]) == 1
    assert payload["messages"][0]["content"].startswith('Instruction: { "Say something nice." }')
    with pytest.raises(RuntimeError, match="would send 2 more requests to https://api.openai.com/v1/chat/"
                                           "completions after 6, past max_requests=6"):
        judge.judge(["q"], [["a", "b"]])
    assert len(calls) == 6  # nothing sent past the cap
    plain = APIJudge("m", "Be fair.", None, transport=transport, choices=(" A", " B"))
    assert [m["role"] for m in plain.messages("q", "a", "b")] == ["system", "user"]
    assert "Answer A: a\nAnswer B: b\n" in plain.messages("q", "a", "b")[1]["content"]
    for kwargs, what in [({"choices": ("A", " A")}, "two distinct"), ({"template": "{prompt} {first}"},
                         "must contain"), ({"template": "{prompt} {first} {second} {x}"}, "unknown fields")]:
        with pytest.raises(ValueError, match=what):
            APIJudge("m", transport=transport, **kwargs)
    spec = make_judge("api=http://127.0.0.1:9/v1#served-model")
    assert isinstance(spec, APIJudge) and (spec.url, spec.model) == ("http://127.0.0.1:9/v1/chat/completions",
                                                                       "served-model")
    assert make_judge("api=gpt-4o-mini").model == "gpt-4o-mini"
    assert make_judge("api=http://localhost:8000/v1").url == "http://localhost:8000/v1/chat/completions"
