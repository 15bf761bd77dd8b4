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
    results = bench.benchmark(["5m"], steps=1, warmup=1, repeats=1, libraries=libraries, log=lambda _: None)

    assert [r.benchmark for r in results] == list(bench.BENCHMARKS)
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
