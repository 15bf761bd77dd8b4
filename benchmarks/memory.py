"""The peak-memory harness shared by dpo_memory.py and ppo_memory.py: one fresh process per configuration,
its peak memory, and the markdown table of every configuration against a baseline.

On CPU the figure is the peak resident memory above what the process held when the measurement started
(``ru_maxrss`` delta: every child imports the same libraries before it starts, so baselines are comparable);
on a GPU it is ``torch.cuda.max_memory_allocated``. The scripts import this module as ``memory`` (they run as
``python benchmarks/X.py``, which puts ``benchmarks/`` on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
from typing import Callable, Iterator

# Environment for the children: no tokenizer threads, no hub access, no progress bars or info logs.
QUIET_ENV = dict(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
                 TRANSFORMERS_VERBOSITY="error", HF_DATASETS_DISABLE_PROGRESS_BARS="1")


def method(device: str) -> str:
    """What the figure measures on ``device``, for the report's prose."""
    return "torch.cuda.max_memory_allocated" if device == "cuda" else "peak RSS above the post-import baseline"


class Peak:
    """The measurement made by :func:`peak_memory`: ``device`` from the start, ``mib`` once the block ends."""

    def __init__(self, device: str):
        self.device = device
        self.mib: float | None = None
        self._rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def reset_cuda_peak(self) -> None:
        """Start the GPU peak again from what is allocated now (no-op on CPU; the RSS baseline stays)."""
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()

    def _finish(self) -> None:
        if self.device == "cuda":
            import torch

            peak = torch.cuda.max_memory_allocated()
        else:  # ru_maxrss is in KiB on Linux
            peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._rss_before) * 1024
        self.mib = peak / 2**20


@contextlib.contextmanager
def peak_memory() -> Iterator[Peak]:
    """Peak memory of the block, in MiB: ``with peak_memory() as peak: ...`` then ``peak.mib`` and
    ``peak.device`` ("cuda" or "cpu"). Import everything before entering, so the RSS baseline holds it."""
    import torch

    peak = Peak("cuda" if torch.cuda.is_available() else "cpu")
    peak.reset_cuda_peak()
    yield peak
    peak._finish()


def run_children(script: str, names: list[str], args_for: Callable[[str], list[str]], width: int = 12) -> dict:
    """Run ``python script --child NAME *args_for(NAME)`` for each name, each in a fresh process with
    :data:`QUIET_ENV`, and return ``{name: the JSON object on the child's last stdout line}``. Prints one
    progress line per child (its ``peak_mib`` and ``train_s``); exits with the child's stderr if one fails."""
    env = dict(os.environ, **QUIET_ENV)
    results = {}
    for name in names:
        out = subprocess.run([sys.executable, os.path.abspath(script), "--child", name, *args_for(name)],
                             capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {name:<{width}} {results[name]['peak_mib']:8.0f} MiB  ({results[name]['train_s']:.1f} s)",
              flush=True)
    return results


def ratio_table(results: dict, labels: dict, base_key: str, base_label: str) -> str:
    """Markdown table: each configuration's label (``labels[name]``), its peak MiB and its ratio to the
    ``base_key`` configuration ("-" when that one was not run), in the order of ``results``."""
    device = next(iter(results.values()))["device"]
    base = results.get(base_key, {}).get("peak_mib")
    lines = [f"| configuration | peak memory (MiB, {device}) | vs {base_label} |", "|---|---:|---:|"]
    for name, r in results.items():
        ratio = f"{r['peak_mib'] / base:.2f}x" if base else "-"
        lines.append(f"| {labels[name]} | {r['peak_mib']:.0f} | {ratio} |")
    return "\n".join(lines)


def target_verdict(results: dict, key: str, base_key: str, comparison: str, target: float,
                   both_ways: bool = False) -> str:
    """The report's closing line: ``comparison``, then ``key``'s peak memory above ``base_key``'s and whether
    that is within ``target`` (a fraction; ``both_ways``: in either direction). "" when either was not run."""
    base = results.get(base_key, {}).get("peak_mib")
    if not base or key not in results:
        return ""
    excess = results[key]["peak_mib"] / base - 1
    within = (abs(excess) if both_ways else excess) <= target
    return (f"\n{comparison}: {excess:+.1%} peak memory ({'within' if within else 'NOT within'} the {target:.0%} "
            f"target).\n")
