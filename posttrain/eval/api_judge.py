"""``APIJudge`` (TRL's ``OpenAIPairwiseJudge``): a chat-completions HTTP API as a pairwise judge, reading the
verdict from the log-probs of its one-token reply, both orders. The transport is injectable (the tests use a
local fake server and a plain function; nothing here needs a network to be tested)."""

from __future__ import annotations

import math

from .judges import BasePairwiseJudge


def api_template(choices=("A", "B")) -> str:
    """The API judge's default user message for two answer labels: the answers are shown as ``Answer A`` and
    ``Answer B`` (the stripped choices) and the model is asked to reply with the label alone."""
    a, b = (c.strip().replace("{", "{{").replace("}", "}}") for c in choices)
    return (f"Which answer to the question is better?\nQuestion: {{prompt}}\nAnswer {a}: {{first}}\n"
            f"Answer {b}: {{second}}\nReply with the label of the better answer, {a} or {b}, and nothing else.")


def urllib_transport(url: str, payload: dict, headers: dict, timeout: float = 60.0) -> dict:
    """POST ``payload`` as JSON to ``url`` with the standard library and return the parsed JSON response. Failures
    are one-line ``RuntimeError``s naming the URL (HTTP status and the start of the body, connection error,
    timeout, a body that is not JSON); the request headers (the API key) are never put in them."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json", "Accept": "application/json",
                                              **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        detail = _one_line(err.read(300).decode("utf-8", "replace"), headers)
        raise RuntimeError(f"POST {url} failed: HTTP {err.code} {err.reason}" + (f": {detail}" if detail else "")) \
            from None
    except urllib.error.URLError as err:
        raise RuntimeError(f"POST {url} failed: {_one_line(str(err.reason), headers)}") from None
    except TimeoutError:
        raise RuntimeError(f"POST {url} failed: no response within the {timeout:g} s timeout") from None
    try:
        return json.loads(body)
    except ValueError:
        raise RuntimeError(f"POST {url} returned a body that is not JSON: "
                           f"{_one_line(body[:200].decode('utf-8', 'replace'), headers)!r}") from None


def _one_line(text: str, headers: dict | None = None, limit: int = 200) -> str:
    """``text`` on one line, cut to ``limit`` characters, with any credential from ``headers`` blanked out."""
    for name, value in (headers or {}).items():
        if not any(word in name.lower() for word in ("auth", "key", "token")):
            continue
        for secret in {str(value), str(value).split(" ", 1)[-1]}:
            if len(secret) >= 8:
                text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


class APIJudge(BasePairwiseJudge):
    """A chat-completions API as the judge (OpenAI's, or any OpenAI-compatible server: vLLM, TGI, llama.cpp...).
    Each judgement is one request, POST ``{base_url}/chat/completions`` with ``max_tokens=1``, ``temperature=0``
    and ``logprobs``/``top_logprobs``; the verdict is read from the top log-probs of the first token:
    ``p(first) = softmax(logp_A, logp_B)[0]`` over the two ``choices`` (tokens compared stripped; a choice not
    among the top ``top_logprobs`` counts as probability 0). If the server returns no log-probs, or neither choice
    among them, the reply text decides: 1.0 if it starts with the first choice, 0.0 the second, 0.5 neither. As
    ``LLMJudge``, each pair is also judged swapped and the two estimates averaged (``swap=True``).

    ``template`` is filled with ``prompt``, ``first`` and ``second`` (or TRL's ``response0``/``response1``);
    ``system_prompt`` is a system message, or, if it contains ``{prompt}``, a TRL-style template used as the
    whole user message. ``max_requests`` caps the requests this judge makes (``None``: no cap): a call that would
    go past it raises before sending any. ``transport(url, payload, headers) -> dict`` sends a request (default:
    ``urllib_transport`` with ``timeout``); the key, from the environment variable ``api_key_env``, is read at
    each request, only if set, and sent as ``Authorization: Bearer``. ``base_url`` defaults to
    ``$OPENAI_BASE_URL`` or OpenAI's. Requests run ``max_workers`` at a time."""

    def __init__(self, model: str = "gpt-4-turbo-preview", system_prompt: str | None = None,
                 max_requests: int | None = 1000, *, base_url: str | None = None, template: str | None = None,
                 choices=("A", "B"), swap: bool = True, top_logprobs: int = 20, api_key_env: str = "OPENAI_API_KEY",
                 transport=None, timeout: float = 60.0, max_workers: int = 8):
        import functools
        import os

        labels = [str(c).strip() for c in choices]
        if len(labels) != 2 or not all(labels) or labels[0] == labels[1]:
            raise ValueError(f"APIJudge needs two distinct, non-blank answer choices; got {list(choices)}.")
        if system_prompt is not None and "{prompt}" in system_prompt:  # TRL: the system prompt is the template
            template, system_prompt = system_prompt, None
        template = api_template(labels) if template is None else template
        if "{prompt}" not in template or not ({"{first}", "{second}"} <= _keys(template)
                                              or {"{response0}", "{response1}"} <= _keys(template)):
            raise ValueError("The API judge template must contain {prompt} and {first} and {second} "
                             "(or TRL's {response0} and {response1}).")
        unknown = _keys(template) - {"{prompt}", "{first}", "{second}", "{response0}", "{response1}"}
        if unknown:
            raise ValueError(f"The API judge template has unknown fields {sorted(unknown)} (double literal braces).")
        if max_requests is not None and max_requests < 0:
            raise ValueError(f"max_requests must be >= 0 or None; got {max_requests}.")
        if top_logprobs < 1 or max_workers < 1:
            raise ValueError(f"top_logprobs and max_workers must be >= 1; got {top_logprobs}, {max_workers}.")
        base = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model, self.system_prompt, self.template, self.choices, self.swap = model, system_prompt, template, \
            tuple(labels), swap
        self.max_requests, self.num_requests, self.top_logprobs = max_requests, 0, top_logprobs
        self.api_key_env, self.max_workers = api_key_env, max_workers
        self.transport = transport if transport is not None else functools.partial(urllib_transport, timeout=timeout)

    def messages(self, prompt, first, second) -> list[dict]:
        """The chat messages that ask for one verdict, ``first`` shown as the first answer."""
        content = self.template.format(prompt=prompt, first=first, second=second, response0=first,
                                       response1=second)
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [{"role": "user", "content": content}]

    def _headers(self) -> dict:
        import os

        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _reserve(self, n: int) -> None:
        if self.max_requests is not None and self.num_requests + n > self.max_requests:
            raise RuntimeError(f"APIJudge would send {n} more requests to {self.url} after {self.num_requests}, "
                               f"past max_requests={self.max_requests}; raise max_requests (None: no cap).")
        self.num_requests += n

    def _ask(self, job) -> float:
        payload = {"model": self.model, "messages": self.messages(*job), "max_tokens": 1, "logprobs": True,
                   "top_logprobs": self.top_logprobs, "temperature": 0}
        return self.read_verdict(self.transport(self.url, payload, self._headers()))

    def _ask_all(self, jobs: list) -> list[float]:
        if self.max_workers == 1 or len(jobs) <= 1:
            return [self._ask(job) for job in jobs]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(self.max_workers, len(jobs))) as pool:
            return list(pool.map(self._ask, jobs))

    def read_verdict(self, response) -> float:
        """p(first is better) from one chat-completions response (see the class docstring)."""
        def malformed(what):
            keys = sorted(response) if isinstance(response, dict) else type(response).__name__
            error = response.get("error") if isinstance(response, dict) else None
            note = f"; error: {_one_line(str(error.get('message', error) if isinstance(error, dict) else error))}" \
                if error else ""
            return RuntimeError(f"{self.url} returned a malformed chat-completions response ({what}; top-level "
                                f"keys {keys}{note}).")

        choices = response.get("choices") if isinstance(response, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise malformed("no 'choices' list")
        choice, logprobs = choices[0], choices[0].get("logprobs")
        top = _top_logprobs(logprobs)
        if top is None:
            raise malformed("'logprobs' is neither {'content': [{'top_logprobs': [...]}]} nor "
                            "{'top_logprobs': [{token: logprob}]}")
        pair = [_logsumexp([v for t, v in top.items() if t.strip() == label]) for label in self.choices]
        if pair[0] > -math.inf or pair[1] > -math.inf:
            return 1.0 if pair[1] == -math.inf else 0.0 if pair[0] == -math.inf else \
                1.0 / (1.0 + math.exp(pair[1] - pair[0]))
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        text = message.get("content", choice.get("text"))
        if not isinstance(text, str):
            if logprobs:
                text = ""  # log-probs of other tokens only: no verdict
            else:
                raise malformed("neither 'logprobs' nor a reply text in choices[0]")
        text = text.strip()
        hits = [label for label in self.choices if text.startswith(label)]
        if not hits:
            return 0.5
        return 1.0 if max(hits, key=len) == self.choices[0] else 0.0

    def first_probability(self, prompts: list, pairs: list) -> list[float]:
        """p(first is better) in the order shown, one request per pair (no swap)."""
        self._reserve(len(pairs))
        return self._ask_all([(p, a, b) for p, (a, b) in zip(prompts, pairs)])

    def scores(self, prompts, pairs):
        jobs = [(p, a, b) for p, (a, b) in zip(prompts, pairs)]
        if self.swap:
            jobs += [(p, b, a) for p, (a, b) in zip(prompts, pairs)]
        self._reserve(len(jobs))
        probs = self._ask_all(jobs)
        direct, swapped = probs[:len(pairs)], probs[len(pairs):]
        return [(p + 1.0 - q) / 2 for p, q in zip(direct, swapped)] if self.swap else direct


OpenAIPairwiseJudge = APIJudge  # TRL's name; TRL's (model, system_prompt, max_requests) come first


def _keys(template: str) -> set:
    import string

    return {"{" + name + "}" for _, name, _, _ in string.Formatter().parse(template) if name}


def _top_logprobs(logprobs) -> dict | None:
    """``{token: logprob}`` of the first generated token from either log-probs format ({} if none were sent);
    ``None`` if malformed."""
    if not logprobs:
        return {}
    if not isinstance(logprobs, dict):
        return None
    if "content" in logprobs:  # chat format: content[0] = {token, logprob, top_logprobs: [{token, logprob}]}
        content = logprobs["content"]
        if not content:
            return {}
        first = content[0] if isinstance(content, list) else None
        if not isinstance(first, dict) or not isinstance(first.get("top_logprobs", []), list):
            return None
        entries = ([first] if "token" in first else []) + list(first.get("top_logprobs", []))
        if not all(isinstance(e, dict) and isinstance(e.get("token"), str)
                   and isinstance(e.get("logprob"), (int, float)) for e in entries):
            return None
        return {e["token"]: float(e["logprob"]) for e in entries}
    top = logprobs.get("top_logprobs")  # completions format: top_logprobs[0] = {token: logprob}
    if isinstance(top, list) and (not top or isinstance(top[0], dict)):
        if top and not all(isinstance(v, (int, float)) for v in top[0].values()):
            return None
        return {str(t): float(v) for t, v in top[0].items()} if top else {}
    return None


def _logsumexp(values: list[float]) -> float:
    if not values:
        return -math.inf
    top = max(values)
    return top if top == -math.inf else top + math.log(sum(math.exp(v - top) for v in values))
