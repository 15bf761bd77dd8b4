"""The benchmark harness (benchmarks/run.py) in its quickest form: one timed step per run, one round."""

import importlib.util
import math
import sys
from pathlib import Path

RUN_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def _load_harness():
    spec = importlib.util.spec_from_file_location("posttrain_benchmarks_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_benchmark_harness_measures_both_libraries():
    bench = _load_harness()
    # TRL comes with the `bench` extra; without it the harness still runs (and checks) posttrain's side.
    has_trl = importlib.util.find_spec("trl") is not None
    libraries = ("posttrain", "trl") if has_trl else ("posttrain",)
    names = tuple(b for b in bench.BENCHMARKS if b not in bench.PAIRED)  # DPO and KTO: see the next tests
    results = bench.benchmark(["5m"], steps=1, warmup=1, repeats=1, benchmarks=names, libraries=libraries,
                              log=lambda _: None)

    assert [r.benchmark for r in results] == list(names) == ["sft", "sft-packed", "reward"]
    for res in results:
        assert res.params > 1_000_000
        run = res.runs["posttrain"][0]
        assert list(run.units) == [2] and run.units[2] > 0 and run.seconds[2] > 0
        assert res.throughput("posttrain") > 0
        if has_trl:
            assert res.throughput("trl") > 0
            assert math.isfinite(res.ratio) and res.ratio > 0
            # Same weights, same batches, same first loss: the two sides really do the same work.
            assert run.units == res.runs["trl"][0].units
            assert math.isclose(run.first_loss, res.runs["trl"][0].first_loss, rel_tol=1e-3)
        else:
            assert math.isnan(res.ratio)

    table = bench.table(results)
    assert table.count("\n") == 1 + len(results)
    assert all(header in table for header in ("posttrain", "TRL", "ratio"))


def test_benchmark_harness_dpo_rows(monkeypatch):
    """The DPO rows (copy reference, LoRA reference, prefix sharing): 1 timed step, batch 2 to stay fast."""
    bench = _load_harness()
    monkeypatch.setattr(bench, "BATCH_SIZE", 2)
    has_trl = importlib.util.find_spec("trl") is not None
    libraries = ("posttrain", "trl") if has_trl else ("posttrain",)
    results = bench.benchmark(["5m"], steps=1, warmup=1, repeats=1, benchmarks=bench.DPO_BENCHMARKS,
                              libraries=libraries, log=lambda _: None)

    assert [r.benchmark for r in results] == list(bench.DPO_BENCHMARKS)
    by = {r.benchmark: r for r in results}
    reference = by["dpo"].runs["posttrain"][0].first_logps
    assert math.isfinite(reference) and reference < 0
    for res in results:
        run = res.runs["posttrain"][0]
        assert run.units == {2: 2}  # two pairs per step, counted as pairs with or without prefix sharing
        assert math.isclose(run.first_loss, math.log(2), rel_tol=1e-4)  # policy == reference at step 1
        # Same rows, same weights: the policy scores the chosen answers alike, shared prefix or not.
        assert math.isclose(run.first_logps, reference, rel_tol=1e-4)
        if has_trl:
            trl_run = res.runs["trl"][0]
            assert trl_run.units == run.units
            assert math.isclose(trl_run.first_loss, run.first_loss, rel_tol=1e-4)
            assert math.isclose(trl_run.first_logps, run.first_logps, rel_tol=1e-4)
            assert math.isfinite(res.ratio) and res.ratio > 0
        else:
            assert math.isnan(res.ratio)
    if has_trl:  # TRL has no prefix sharing: that row reuses the copy-reference row's TRL runs
        assert by["dpo-prefix"].runs["trl"] is by["dpo"].runs["trl"] and by["dpo-prefix"].trl_from == "dpo"
        text = bench.markdown(results, "python benchmarks/run.py --only dpo", 1, 1.0, memory=None)
        assert "DPO, copy reference (pairs/s)" in text and "[1] TRL has no prefix sharing" in text
    assert set(bench.prefix_speedups(results)) == {"5m"}

    rows = bench.dpo_rows(4, bench.load_tokenizer(bench.TOKENIZER))
    tok = bench.load_tokenizer(bench.TOKENIZER)
    for row in rows:  # long prompts, shorter answers, and everything fits max_length (nothing truncated)
        prompt = len(tok(row["prompt"])["input_ids"])
        assert prompt > 100
        for key in ("chosen", "rejected"):
            answer = len(tok(row[key] + tok.eos_token)["input_ids"])
            assert answer < prompt and prompt + answer <= bench.MAX_LENGTH


def test_benchmark_harness_kto_row(monkeypatch):
    """KTO against TRL's KTOTrainer: the same rows counted, the same first loss (policy == reference: every
    row's loss is 1 - sigma(0) = 0.5 at step 1)."""
    bench = _load_harness()
    monkeypatch.setattr(bench, "BATCH_SIZE", 2)
    has_trl = importlib.util.find_spec("trl") is not None
    libraries = ("posttrain", "trl") if has_trl else ("posttrain",)
    (result,) = bench.benchmark(["5m"], steps=1, warmup=1, repeats=1, benchmarks=("kto",), libraries=libraries,
                                log=lambda _: None)
    run = result.runs["posttrain"][0]
    assert run.units == {2: 2} and math.isclose(run.first_loss, 0.5, abs_tol=1e-6)
    if has_trl:
        assert result.runs["trl"][0].units == run.units
        assert math.isclose(result.runs["trl"][0].first_loss, run.first_loss, abs_tol=1e-6)
        assert math.isfinite(result.ratio) and result.ratio > 0
