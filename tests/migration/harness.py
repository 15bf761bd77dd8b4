"""The migration harness: one TRL user's script, run twice -- with ``lib = trl`` and ``lib = posttrain``.

A case is a function ``script(lib, models, out_dir)`` written as TRL's documentation shows (``lib.SFTTrainer``,
``lib.SFTConfig``, ...); ``models`` holds the paths of the tiny model directories both libraries load by name.
It returns the trainer's ``state.log_history``. ``check`` runs one half and records the first logged loss;
the TRL half also compares: first-step losses must agree to ``TOLERANCE`` (absolute).

Results are kept per session (``RESULTS``) for the table printed at the end of the run (conftest's
``pytest_terminal_summary``) and, with ``$MIGRATION_RESULTS`` set, appended to that JSON-lines file
(``tests/migration/report.py`` sets it).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import time
import traceback

import pytest

TOLERANCE = 1e-5
LIBS = ("posttrain", "trl")
RESULTS: dict[str, dict[str, dict]] = {}  # case -> lib -> {"ok", "loss", "error", "seconds"}
# Cases whose numbers differ from TRL's on purpose (README "Differences from TRL"): the unchanged script must
# run on posttrain, and a sibling case with the documented option must match TRL.
DOCUMENTED: dict[str, str] = {
    "dpo/loss_ipo": "posttrain's IPO is the paper's (summed log-ratios); dpo/loss_ipo_normalized passes "
                    "ipo_normalize_length=True and must match TRL",
}


def common_args(out_dir, **overrides) -> dict:
    """Settings every case passes to its config, on both sides: one or two fp32 CPU steps, batch 2, log every
    step, no saving, no reporting. ``bf16=False``: TRL's configs default to bf16 mixed precision."""
    args = dict(output_dir=str(out_dir), max_steps=1, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                logging_steps=1, report_to="none", seed=0, bf16=False, use_cpu=True, save_strategy="no",
                disable_tqdm=True)
    args.update(overrides)
    return args


def first(log_history, key="loss"):
    """The first value of ``key`` in a log history (None when it was never logged)."""
    for entry in log_history or []:
        if key in entry:
            return float(entry[key])
    return None


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def _tail(result, lines: int = 8) -> str:
    return "\n".join(result.get("traceback", "").rstrip().splitlines()[-lines:])


def run(case: str, script, lib_name: str, models, out_dir, key: str = "loss") -> dict:
    """Run one half (cached for the session) and record it."""
    if lib_name in RESULTS.get(case, {}):
        return RESULTS[case][lib_name]
    lib = importlib.import_module(lib_name)
    start = time.perf_counter()
    result = {"ok": False, "loss": None, "error": None, "key": key}
    try:
        history = script(lib, models, out_dir)
        value = history if isinstance(history, (int, float)) else first(history, key)
        if value is None or not math.isfinite(value):
            raise AssertionError(f"no finite {key!r} in the log history: {history!r}"[:300])
        result.update(ok=True, loss=value)
    except Exception as err:  # noqa: BLE001  (recorded, then re-raised by check)
        result.update(error=_short(err), traceback=traceback.format_exc())
    result["seconds"] = round(time.perf_counter() - start, 2)
    RESULTS.setdefault(case, {})[lib_name] = result
    path = os.environ.get("MIGRATION_RESULTS")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"case": case, "lib": lib_name, **{k: v for k, v in result.items()
                                                                  if k != "traceback"}}) + "\n")
    return result


def check(case: str, script, lib_name: str, models, tmp_path_factory, key: str = "loss",
          tolerance: float = TOLERANCE) -> None:
    """The test body of one half. ``posttrain``: the script must run and log a finite first ``key``.
    ``trl`` (skipped without trl): TRL must run it, and when the posttrain half ran, the first ``key``
    values must agree within ``tolerance``."""
    out = lambda lib: tmp_path_factory.mktemp(f"{case}-{lib}".replace("/", "_")[:60])  # noqa: E731
    if lib_name == "trl":
        pytest.importorskip("trl")
        theirs = run(case, script, "trl", models, out("trl"), key)
        if not theirs["ok"]:
            pytest.fail(f"the TRL half failed: {theirs['error']}\n{_tail(theirs)}")
        ours = run(case, script, "posttrain", models, out("posttrain"), key)
        if not ours["ok"]:
            pytest.skip(f"posttrain half failed ({ours['error']}); nothing to compare")
        diff = abs(ours["loss"] - theirs["loss"])
        if case in DOCUMENTED:
            assert diff > tolerance, f"{case} now matches TRL: drop it from DOCUMENTED and the README's table"
            return
        assert diff <= tolerance, (f"first {key}: TRL {theirs['loss']!r}, posttrain {ours['loss']!r}, "
                                   f"|diff| {diff:.3g} > {tolerance}")
    else:
        ours = run(case, script, "posttrain", models, out("posttrain"), key)
        if not ours["ok"]:
            pytest.fail(f"posttrain failed: {ours['error']}\n{_tail(ours)}")


def table(results: dict[str, dict[str, dict]] | None = None) -> str:
    """A markdown table: case | posttrain ok | TRL first loss | posttrain first loss | |diff|. A case that
    compares another logged value than the first ``loss`` names it in brackets (``grpo/standard [reward]``)."""
    results = RESULTS if results is None else results
    fmt = lambda r: "-" if not r else (f"{r['loss']:.6f}" if r.get("ok") else "error")  # noqa: E731
    lines = ["| case | posttrain ok | TRL first loss | posttrain first loss | abs diff |",
             "|---|---|---|---|---|"]
    for case in sorted(results):
        ours, theirs = results[case].get("posttrain"), results[case].get("trl")
        ok = "-" if ours is None else ("yes" if ours["ok"] else "no: " + ours["error"][:80].replace("|", "/"))
        diff = "-"
        if ours and theirs and ours.get("ok") and theirs.get("ok"):
            d = abs(ours["loss"] - theirs["loss"])
            diff = f"{d:.2e}" + ("" if d <= TOLERANCE else " (documented)" if case in DOCUMENTED else " (!)")
        key = next((r.get("key") for r in (ours, theirs) if r), "loss")
        label = case if key == "loss" else f"{case} [{key}]"
        lines.append(f"| {label} | {ok} | {fmt(theirs)} | {fmt(ours)} | {diff} |")
    return "\n".join(lines)
