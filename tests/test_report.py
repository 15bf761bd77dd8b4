"""The demo report: plots, a self-contained HTML page, and (where chromium exists) a real render."""

import math
import re
import shutil

import pytest

pytest.importorskip("matplotlib")

from posttrain.eval.browser import ReportCheckError, check_in_browser  # noqa: E402
from posttrain.eval.report import write_report  # noqa: E402

PROMPTS = ["Honestly, the film", "The acting in this movie", "I walked out of the cinema", "The plot",
           "My kids watched it and", "<script>alert('x')</script> The soundtrack"]


def _samples(method: str, shift: float) -> list[dict]:
    words = {"pretrain": "was a film that the", "sft": "was dull and far too long,",
             "ppo": "was great great, great fun", "dpo": "was a wonderful, warm surprise"}[method]
    return [{"prompt": p, "completion": f" {words} ({method} {i})" if i else " <script>alert(1)</script> & more",
             "rm_score": round(shift + 0.3 * i - 0.7, 3), "sentiment": round(math.tanh(shift + 0.1 * i), 3)}
            for i, p in enumerate(PROMPTS)]


def _ppo_history(kl_coef: float) -> list[dict]:
    return [{"step": s, "reward": round(2.5 * (1 - math.exp(-s / (8 + 100 * kl_coef))) - 0.4, 4),
             "kl": round(0.4 * s / (1 + 40 * kl_coef), 4), "policy_loss": 0.01, "value_loss": 0.3 / s}
            for s in range(1, 41)]


def _path(score: float, kl: float, early_kl: float, steps: int) -> list[dict]:
    """4 held-out probes along a run; the last is the final model (its numbers in ``evaluations``)."""
    kls = [early_kl, (early_kl + kl) / 2, kl * 1.1, kl]
    return [{"step": steps * (i + 1) // 4, "rm_score": round(score * (0.4 + 0.2 * i), 3),
             "sentiment": round(0.1 * i, 3), "kl": round(k, 3), "length": 16.0} for i, k in enumerate(kls)]


def _judges(names: list[str]) -> dict:
    """Synthetic ``results["judges"]``: win rates against SFT and ratings, as ``Demo.judge_models`` writes them."""
    out = {}
    for j, judge in enumerate(("reward model", "sentiment rule")):
        ratings = {n: [round(900 + 40 * i - 15 * j, 2), round(850 + 40 * i - 15 * j, 2),
                       round(960 + 40 * i - 15 * j, 2)] for i, n in enumerate(names)}
        rates = {n: {"rate": 0.1 * i + 0.025 * j, "low": max(0.0, 0.1 * i - 0.15), "high": min(1.0, 0.1 * i + 0.12),
                     "n": 40, "confidence": 0.95} for i, n in enumerate(names) if n != "SFT"}
        out[judge] = {"baseline": "SFT", "prompts": 40, "win_rates": rates, "ratings": ratings, "table": "| ... |"}
    return out


def make_results() -> dict:
    ppo_runs = [{"label": f"kl_coef={c}", "setting": {"kl_coef": c}, "dir": f"ppo/kl_coef-{c}",
                 "history": _ppo_history(c)} for c in (0.02, 0.05, 0.2)]
    dpo_runs = [{"label": f"beta={b}", "setting": {"beta": b}, "dir": f"dpo/beta-{b}",
                 "history": [{"step": s, "loss": round(0.693 * math.exp(-s * b / 40) + 0.05, 4)}
                             for s in range(10, 201, 10)]}
                for b in (0.05, 0.1, 0.5)]
    evals = [{"name": "pretrain", "method": "pretrain", "label": None, "main": False, "rm_score": -1.031,
              "sentiment": -0.12, "kl": 23.417, "length": 18.04, "samples": _samples("pretrain", -1.0)},
             {"name": "sft", "method": "sft", "label": None, "main": True, "rm_score": -0.212, "sentiment": 0.051,
              "kl": 0.0, "length": 14.2, "samples": _samples("sft", -0.2)}]
    for (c, score, kl), run in zip([(0.02, 2.871, 14.336), (0.05, 2.137, 7.894), (0.2, 0.962, 2.114)], ppo_runs):
        run["path"] = _path(score, kl, 70.0 if c == 0.02 else kl / 2, 40)
        evals.append({"name": f"ppo {run['label']}", "method": "ppo", "label": run["label"], "main": c == 0.05,
                      "rm_score": score, "sentiment": 0.4 + score / 10, "kl": kl, "length": 17.26,
                      "samples": _samples("ppo", score)})
    for (b, score, kl), run in zip([(0.05, 1.948, 9.512), (0.1, 1.503, 5.467), (0.5, 0.433, 1.238)], dpo_runs):
        run["path"] = _path(score, kl, kl / 3, 200)
        evals.append({"name": f"dpo {run['label']}", "method": "dpo", "label": run["label"], "main": b == 0.1,
                      "rm_score": score, "sentiment": 0.3 + score / 10, "kl": kl, "length": 15.5,
                      "samples": _samples("dpo", score)})
    return {
        "model": "tiny:llama-5m", "machine": "2 CPU cores (x86_64, Linux), no GPU; torch 2.13.0, posttrain 0.x",
        "total_seconds": 512.3, "eval_prompts": 48,
        "stages": {
            "pretrain": {"seconds": 61.0, "summary": "loss 5.81 -> 3.07 on 2,400 reviews",
                         "history": [{"step": s, "loss": 6 * math.exp(-s / 200) + 3} for s in range(25, 501, 25)]},
            "sft": {"seconds": 40.0, "summary": "loss 2.95 -> 1.23 on positive continuations",
                    "history": [{"step": s, "loss": 2 * math.exp(-s / 60) + 1.2} for s in range(25, 301, 25)]},
            "reward": {"seconds": 30.0, "summary": "held-out pairwise accuracy 0.973",
                       "history": [{"step": s, "loss": 0.7 * math.exp(-s / 50) + 0.1} for s in range(25, 201, 25)]
                       + [{"step": 100, "eval_loss": 0.31, "eval_accuracy": 0.9}, {"step": 200, "eval_loss": 0.18,
                                                                                    "eval_accuracy": 0.973}]},
            "ppo": {"seconds": 240.5, "main": "kl_coef=0.05",
                    "summary": "kl_coef=0.02: RM 2.87 at KL 14.3\n   kl_coef=0.05: RM 2.14 at KL 7.89 <b>",
                    "runs": ppo_runs},
            "dpo": {"seconds": 100.0, "summary": "main run: RM score -0.21 -> 1.50 at KL 5.47", "main": "beta=0.1",
                    "runs": dpo_runs},
        },
        "evaluations": evals,
        "judges": _judges(["Pretrain", "SFT"] + [f"PPO {r['label']}" for r in ppo_runs]
                          + [f"DPO {r['label']}" for r in dpo_runs]),
    }


PLOTS = ("ppo_reward_kl.png", "losses.png", "frontier.png", "ratings.png")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    path = write_report(make_results(), str(out))
    return out, path, open(path, encoding="utf-8").read()


def test_writes_four_valid_pngs(report):
    from PIL import Image

    out, path, _ = report
    assert path == str(out / "report.html")
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        with Image.open(out / name) as img:
            img.verify()
        with Image.open(out / name) as img:
            assert img.width > 500 and img.height > 300, (name, img.size)


def test_html_is_self_contained(report):
    _, _, page = report
    assert "http://" not in page and "https://" not in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 4
    assert all(s.startswith("data:image/png;base64,") for s in srcs), [s[:40] for s in srcs]
    assert "<link" not in page and "@import" not in page and "url(" not in page


def test_numbers_and_text_come_from_results(report):
    _, _, page = report
    for text in ["tiny:llama-5m", "2 CPU cores (x86_64, Linux)", "8 min 32 s", "4 min 0 s", "40.0 s",
                 "held-out pairwise accuracy 0.973", "48 held-out prompts", "PPO ★ main", "β=0.1", "kl_coef=0.2",
                 "ppo/kl_coef-0.02", "dpo/beta-0.5", "README.md",  # model dirs and cards
                 "Honestly, the film", "was great great, great fun (ppo 1)", "wonderful, warm surprise (dpo 3)",
                 "RM +1.74", "RM -0.30"]:  # samples of main PPO (2.137 + 0.3 - 0.7) and SFT (-0.2 + 0.6 - 0.7)
        assert text in page, text
    for number in ["2.14", "7.89", "17.3", "1.50", "5.47", "23.42", "-1.03", "0.00"]:  # evaluation table cells
        assert f'<td class="num">{number}</td>' in page, number
    assert "RM +2.17" not in page  # a sample of the non-main PPO run kl_coef=0.02
    assert "not run" not in page


def test_main_runs_marked(report):
    _, _, page = report
    main_rows = re.findall(r'<tr class="main">(.*?)</tr>', page)
    assert len(main_rows) == 2
    assert "kl_coef=0.05" in main_rows[0] and "β=0.1" in main_rows[1]


def test_text_is_escaped(report):
    _, _, page = report
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; The soundtrack" in page
    assert page.count("<script>") == 1  # only the report's own image-count script


def test_multiline_summary_one_run_per_line(report):
    _, _, page = report
    assert "<td>kl_coef=0.02: RM 2.87 at KL 14.3<br>kl_coef=0.05: RM 2.14 at KL 7.89 &lt;b&gt;<br><small>" in page


def test_frontier_draws_paths_and_explains_them(report):
    from PIL import Image

    out, _, page = report
    assert "Each big marker is one run&#x27;s final model" in page and "Up and to the left is better" in page
    with Image.open(out / "frontier.png") as img:
        assert img.width > 600 and img.height > 400, img.size


def test_runs_without_path_still_render(report, tmp_path):  # results.json from before paths were recorded
    results = make_results()
    for method in ("ppo", "dpo"):
        for run in results["stages"][method]["runs"]:
            del run["path"]
    results["stages"]["dpo"]["runs"][0]["path"] = []
    page = open(write_report(results, str(tmp_path)), encoding="utf-8").read()
    assert page.count('<img src="data:image/png;base64,') == 4
    with_paths = (report[0] / "frontier.png").read_bytes()
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "frontier.png").read_bytes() != with_paths  # the paths were drawn (and now are not)


def test_absent_stages_say_not_run(tmp_path):
    results = make_results()
    del results["stages"]["ppo"], results["stages"]["dpo"]
    results["evaluations"] = [e for e in results["evaluations"] if e["method"] not in ("ppo", "dpo")]
    del results["judges"]
    page = open(write_report(results, str(tmp_path)), encoding="utf-8").read()
    assert re.search(r"<td>PPO</td>.*?not run", page) and re.search(r"<td>DPO</td>.*?not run", page)
    assert not (tmp_path / "ppo_reward_kl.png").exists() and not (tmp_path / "frontier.png").exists()
    assert (tmp_path / "losses.png").exists()
    assert page.count("<img ") == 1
    assert "Stages not run: PPO, DPO." in page


def test_empty_results_do_not_crash(tmp_path):
    page = open(write_report({}, str(tmp_path)), encoding="utf-8").read()
    assert page.count("not run") >= 5 + 4 + 1  # stages, plots, the win-rate table
    assert "<img " not in page


def test_win_rates_and_ratings_table(report):
    from PIL import Image

    out, _, page = report
    assert "<h2>Win rates and ratings</h2>" in page
    assert "ties counting half" in page and "Wilson 95% interval" in page and "Bradley–Terry" in page
    table = re.search(r'<table class="judges">(.*?)</table>', page, re.S).group(1)
    assert "Win rate vs SFT (95% interval, n prompts)" in table and "Bradley–Terry rating (95% interval)" in table
    assert table.count("<th>reward model</th>") == 2 and table.count("<th>sentiment rule</th>") == 2
    rows = re.findall(r"<tr><td>(.*?)</td>(.*?)</tr>", table)
    assert [name for name, _ in rows] == ["Pretrain", "SFT", "PPO kl_coef=0.02", "PPO kl_coef=0.05",
                                          "PPO kl_coef=0.2", "DPO β=0.05", "DPO β=0.1", "DPO β=0.5"]
    cells = {name: re.findall(r'<td class="num">(.*?)</td>', rest) for name, rest in rows}
    assert all(len(c) == 4 for c in cells.values())
    assert cells["SFT"][:2] == ["baseline", "baseline"]
    # PPO kl_coef=0.05 is the 4th model (i = 3): rate 0.3 (RM) and 0.275 (sentiment); ratings 1020 and 1005.
    assert cells["PPO kl_coef=0.05"] == ["30.0% <small>(15.0%–42.0%), n=40</small>",
                                         "32.5% <small>(15.0%–42.0%), n=40</small>",
                                         "1020 <small>(970–1080)</small>", "1005 <small>(955–1065)</small>"]
    assert 'alt="ratings.png"' in page
    with Image.open(out / "ratings.png") as img:
        assert img.width > 600 and img.height > 300, img.size


def test_no_judges_say_not_run(tmp_path):
    results = make_results()
    del results["judges"]
    results["judges_not_run"] = "no reward model in runs/demo/reward"
    page = open(write_report(results, str(tmp_path)), encoding="utf-8").read()
    assert re.search(r"<h2>Win rates and ratings</h2>.*?<p class=\"notrun\">not run "
                     r"\(no reward model in runs/demo/reward\)</p>", page, re.S)
    assert re.search(r"<h3>Ratings</h3><p class=\"notrun\">not run", page)
    assert '<table class="judges">' not in page and not (tmp_path / "ratings.png").exists()
    assert page.count("<img ") == 3
    results["judges"] = {}  # a results.json written by the demo with judges skipped, without the reason
    del results["judges_not_run"]
    page = open(write_report(results, str(tmp_path)), encoding="utf-8").read()
    assert re.search(r"<h2>Win rates and ratings</h2>.*?<p class=\"notrun\">not run</p>", page, re.S)


needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")


@needs_chromium
def test_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    _, path, _ = report
    shot = tmp_path / "shot.png"
    info = check_in_browser(path, str(shot))
    assert info["images_loaded"] == info["images_total"] == 4  # the ratings plot too
    assert info["colours"] >= 200
    with Image.open(shot) as img:
        assert img.width == 1280 and img.height >= 2000, img.size


@needs_chromium
def test_browser_check_catches_a_broken_image(report, tmp_path):
    _, path, page = report
    broken = tmp_path / "broken.html"
    start = page.index("base64,") + len("base64,")
    broken.write_text(page[:start] + "AAAA" + page[start + 40:], encoding="utf-8")  # corrupt the first PNG
    with pytest.raises(ReportCheckError, match="3 of 4 images decoded"):
        check_in_browser(str(broken), str(tmp_path / "shot.png"))
