"""The README's Python quick start runs as written (offline, in a temporary directory)."""

import os
import re

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_python_quick_start_runs(tmp_path, monkeypatch, capsys):
    text = open(README, encoding="utf-8").read()
    block = re.search(r"## Python quick start\s+```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README quick start", "exec"), {})
    accuracy = float(re.search(r"held-out pairwise accuracy: ([0-9.]+)", capsys.readouterr().out).group(1))
    assert accuracy >= 0.9
    assert (tmp_path / "runs" / "quickstart-sft" / "model.safetensors").exists()
    assert (tmp_path / "runs" / "quickstart-rm" / "README.md").exists()
    online = re.search(r"### Online RL: PPO, GRPO, RLOO\s+```python\n(.*?)```", text, re.S).group(1)
    exec(compile(online, "README online RL quick start", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    printed = [eval(line) for line in lines if line.startswith("{'eval_reward'")]  # the progress bar's too
    (evaluation,) = [d for d in printed if isinstance(d["eval_reward"], float)]  # print(ppo.evaluate(...))
    assert {"eval_reward", "eval_sentiment", "eval_kl", "eval_kl_sum", "eval_length"} <= set(evaluation)
    assert 0 <= float(lines[-1]) <= 1  # GRPO's last logged reward
    assert (tmp_path / "runs" / "quickstart-ppo" / "value_head.safetensors").exists()
    tools = re.search(r"### Tools and self-training\s+```python\n(.*?)```", text, re.S).group(1)
    scope = {}
    exec(compile(tools, "README tools quick start", "exec"), scope)
    assert [e["step"] for e in scope["trainer"].state.log_history] == [1, 2]


def test_judges_snippet_runs_as_written():
    text = open(README, encoding="utf-8").read()
    block = re.search(r"### Judges, win rates and ratings\s+.*?```python\n(.*?)```", text, re.S).group(1)
    scope = {}
    exec(compile(block, "README judges", "exec"), scope)
    assert scope["judge"].judge(["Hi"], [["hello there", "hey"]]) == [1]  # as the comment says
