"""`posttrain demo`: a reduced run of the whole pipeline, its report, and stages whose inputs are missing."""

import json
import os
import shutil

import pytest

from posttrain.cli import main
from posttrain.data import toy


@pytest.fixture(scope="module")
def reduced_demo(tmp_path_factory):
    """Every stage on tiny:llama, 60 steps each (about 40 s on one core)."""
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--output_dir", str(out), "--model", "tiny:llama", "--steps", "60", "--quick"])
    with open(out / "results.json", encoding="utf-8") as fh:
        return code, out, json.load(fh)


def test_reduced_demo_writes_every_stage_and_the_report(reduced_demo):
    code, out, results = reduced_demo
    assert code == 0
    assert set(results["stages"]) == {"pretrain", "sft", "reward", "ppo", "dpo"}
    for stage in ("pretrain", "sft", "reward"):
        assert (out / stage / "model.safetensors").exists() and (out / stage / "README.md").exists()
    for method, setting in (("ppo", "kl_coef"), ("dpo", "beta")):
        runs = results["stages"][method]["runs"]
        assert len(runs) == 3 and len({json.dumps(r["setting"]) for r in runs}) == 3
        for run in runs:
            assert (out / run["dir"] / "model.safetensors").exists()
            card = (out / run["dir"] / "README.md").read_text()
            assert "## Held-out evaluation (posttrain demo)" in card and setting in card
            assert [p["step"] for p in run["path"]] == [15, 30, 45, 60]  # probes every 60 // 4 steps, then final
    for name in ("report.html", "frontier.png", "ppo_reward_kl.png", "losses.png", "ratings.png"):
        assert (out / name).stat().st_size > 1000
    losses = [e["loss"] for e in results["stages"]["pretrain"]["history"] if "loss" in e]
    assert losses[-1] < losses[0] - 1.0  # pretraining learned something


def test_reduced_demo_ppo_and_dpo_raise_the_reward_model_score(reduced_demo):
    _, _, results = reduced_demo
    evals = {e["name"]: e for e in results["evaluations"]}
    sft = evals["sft"]
    assert sft["kl"] == pytest.approx(0.0, abs=1e-4)  # the reference is the SFT model itself
    prompts = [s["prompt"] for s in sft["samples"]]
    assert prompts == toy.held_out_openings(40)
    for method in ("ppo", "dpo"):
        runs = [e for e in results["evaluations"] if e["method"] == method]
        assert len(runs) == 3 and sum(e["main"] for e in runs) == 1
        for e in runs:
            assert [s["prompt"] for s in e["samples"]] == prompts  # the same held-out prompts
            assert e["rm_score"] > sft["rm_score"] + 0.1, (e["name"], e["rm_score"], sft["rm_score"])
            assert e["kl"] > 0.1
            # The final point of a run's path is its evaluation.
            path = next(r["path"] for r in results["stages"][method]["runs"] if r["label"] == e["label"])
            assert path[-1]["rm_score"] == pytest.approx(e["rm_score"])
    # The strongest KL penalty / the largest beta stays closest to the SFT model.
    for method, key in (("ppo", "kl_coef"), ("dpo", "beta")):
        runs = sorted((e for e in results["evaluations"] if e["method"] == method), key=lambda e: e["label"])
        by_setting = {float(e["label"].split("=")[1]): e["kl"] for e in runs}
        assert by_setting[max(by_setting)] < by_setting[min(by_setting)]


def test_reduced_demo_judges_every_model_against_sft(reduced_demo):
    """The report stage judges the stored held-out samples: win rates vs SFT and ratings, by two judges."""
    _, out, results = reduced_demo
    judges = results["judges"]
    assert set(judges) == {"reward model", "sentiment rule"} and "judges_not_run" not in results
    runs = [f"{method.upper()} {e['label']}" for method in ("ppo", "dpo")
            for e in results["evaluations"] if e["method"] == method]
    assert len(runs) == 6
    for name, verdict in judges.items():
        assert verdict["baseline"] == "SFT" and verdict["prompts"] == 40
        assert list(verdict["ratings"]) == ["Pretrain", "SFT", *runs]
        assert set(verdict["win_rates"]) == {"Pretrain", *runs}  # everyone but the baseline
        for model, rate in verdict["win_rates"].items():
            assert 0.0 <= rate["low"] <= rate["rate"] <= rate["high"] <= 1.0, (name, model, rate)
            assert rate["n"] == 40 and rate["confidence"] == 0.95
        for model, (rating, low, high) in verdict["ratings"].items():
            assert low <= rating <= high, (name, model)
    # The reward model prefers every PPO and DPO run's completions to SFT's (what they were trained for).
    rm = {model: rate["rate"] for model, rate in judges["reward model"]["win_rates"].items()}
    assert all(rm[model] > 0.5 for model in runs), rm
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<h2>Win rates and ratings</h2>" in page and '<table class="judges">' in page


def test_judges_are_skipped_with_a_reason(tmp_path):
    """Fewer than two evaluated models, no SFT or no reward model: no judges, and results say why."""
    import argparse

    from posttrain.demo import Demo

    demo = Demo(argparse.Namespace(output_dir=str(tmp_path), seed=0))
    sample = [{"prompt": "The film", "completion": " was fine."}]
    sft = {"name": "sft", "method": "sft", "label": None, "samples": sample}
    ppo = {"name": "ppo kl_coef=0.3", "method": "ppo", "label": "kl_coef=0.3", "samples": sample}
    assert demo.judge_models([]) == ({}, "fewer than two evaluated models (0)")
    assert demo.judge_models([sft]) == ({}, "fewer than two evaluated models (1)")
    assert demo.judge_models([ppo, {**ppo, "label": "kl_coef=1"}])[1] == "no evaluated SFT model to compare against"
    assert demo.judge_models([sft, ppo]) == ({}, f"no reward model in {tmp_path / 'reward'}")
    assert Demo.model_name(ppo) == "PPO kl_coef=0.3" and Demo.model_name(sft) == "SFT"


def test_training_data_never_contains_a_held_out_opening(reduced_demo):
    _, out, _ = reduced_demo
    held = set(toy.held_out_openings(40))
    for name in ("sft", "preferences", "prompts"):
        with open(out / "data" / f"{name}.jsonl", encoding="utf-8") as fh:
            prompts = [json.loads(line)["prompt"] for line in fh]
        assert prompts and not held & set(prompts)
    with open(out / "data" / "pretrain.jsonl", encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    assert len(texts) == 3000 and not any(t.startswith(h) for t in texts for h in held)


def test_shipped_corpus_is_the_generator_output():
    from importlib import resources

    shipped = resources.files("posttrain").joinpath("assets/reviews.txt").read_text(encoding="utf-8").splitlines()
    assert shipped == toy.review_corpus(3000, seed=7, exclude=frozenset(toy.held_out_openings()))
    positive = sum(any(p in line for p in toy.POSITIVE) for line in shipped)
    assert 0.4 < positive / len(shipped) < 0.6  # mixed sentiment


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt install chromium)")
def test_the_demo_report_renders_in_a_headless_browser(reduced_demo, tmp_path):
    from posttrain.eval.browser import check_in_browser

    _, out, _ = reduced_demo
    result = check_in_browser(str(out / "report.html"), str(tmp_path / "shot.png"))
    assert result["images_loaded"] == result["images_total"] == 4  # with the judges' ratings plot
    assert result["colours"] > 1000 and os.path.getsize(tmp_path / "shot.png") > 10000


def test_a_stage_without_its_inputs_says_what_to_run_first(tmp_path, capsys):
    # Nothing there: DPO needs SFT, which needs pretraining.
    assert main(["demo", "--output_dir", str(tmp_path), "--stage", "dpo", "--quick"]) == 1
    assert "Run first: posttrain demo --stage pretrain" in capsys.readouterr().out
    for stage in ("pretrain", "sft"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "stage.json").write_text("{}")
    assert main(["demo", "--output_dir", str(tmp_path), "--stage", "ppo", "--quick"]) == 1
    assert f"Run first: posttrain demo --stage reward --output_dir {tmp_path}" in capsys.readouterr().out
    assert not (tmp_path / "ppo").exists()
    # SFT present without its pretraining input: PPO does not need pretraining any more.
    (tmp_path / "pretrain" / "stage.json").unlink()
    assert main(["demo", "--output_dir", str(tmp_path), "--stage", "ppo", "--quick"]) == 1
    assert "Run first: posttrain demo --stage reward" in capsys.readouterr().out


def test_a_stage_reuses_earlier_outputs(reduced_demo, tmp_path, capsys):
    """Re-running one stage alone reads the saved earlier stages and rewrites only its own outputs."""
    _, out, _ = reduced_demo
    copy = tmp_path / "demo"
    shutil.copytree(out, copy)
    before = {stage: (copy / stage / "model.safetensors").read_bytes() for stage in ("sft", "reward")}
    assert main(["demo", "--output_dir", str(copy), "--stage", "ppo", "--steps", "4", "--quick"]) == 0
    assert "== stage ppo ==" in capsys.readouterr().out
    assert all((copy / stage / "model.safetensors").read_bytes() == before[stage] for stage in before)
    runs = json.loads((copy / "ppo" / "stage.json").read_text())["runs"]
    assert [run["path"][-1]["step"] for run in runs] == [4, 4, 4]
    assert main(["demo", "--output_dir", str(copy), "--stage", "report", "--quick"]) == 0
    results = json.loads((copy / "results.json").read_text())
    assert results["stages"]["ppo"]["runs"][0]["path"][-1]["step"] == 4


@pytest.mark.slow
def test_full_demo_ppo_and_dpo_beat_sft(tmp_path):
    """The default `make demo` run (tiny:llama-5m, about 5 minutes on 2 cores)."""
    assert main(["demo", "--output_dir", str(tmp_path), "--quick"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    evals = {e["name"]: e for e in results["evaluations"]}
    for e in results["evaluations"]:
        if e["method"] in ("ppo", "dpo"):
            assert e["rm_score"] > evals["sft"]["rm_score"] + 3.0, e["name"]


@pytest.mark.parametrize("flags", [["--steps", "0"], ["--dpo_betas", "0"], ["--ppo_kl_coefs", "-1"]])
def test_bad_settings_are_refused_before_any_work(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as err:
        main(["demo", "--output_dir", str(tmp_path / "d"), *flags])
    assert err.value.code == 2 and "must be" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
