"""A separate virtual environment with TRL 0.11.4, the last TRL release with value-head PPO.

TRL 0.11.4 (``trl.PPOTrainer`` + ``AutoModelForCausalLMWithValueHead`` and the classic
``ppo_trainer.step(queries, responses, rewards)`` API) needs transformers 4.46.x, while posttrain runs
on transformers 5, so the baseline lives in its own venv and runs as a subprocess
(``benchmarks/ppo_trl011.py``).

Method:

- ``ensure_env(path)`` creates the venv with the running interpreter's ``venv`` module, upgrades pip,
  installs ``torch==2.13.0`` alone first (the pinned CPU wheel from the local find-links, so nothing
  can pull a CUDA build), then the pinned stack in ``PACKAGES`` with torch pinned again in the same
  command, then imports it and checks the versions. Only then does it write a stamp file holding the
  package list; a venv without the stamp, or with a stamp for another list, is rebuilt from scratch.
  pip runs quietly; its output is shown only on failure. A ``.gitignore`` of ``*`` inside the venv keeps
  it out of ``git status``.
- ``prepare_model_dir(src, dst)`` copies a causal LM + tokenizer saved by transformers 5 into a dir
  transformers 4.46 can load: the tokenizer class becomes ``PreTrainedTokenizerFast`` (5.x writes
  ``TokenizersBackend``, unknown to 4.46), ``extra_special_tokens`` (a list in 5.x) becomes
  ``additional_special_tokens``; config.json's ``dtype`` is also written as ``torch_dtype`` and
  ``rope_parameters`` as ``rope_theta`` / ``rope_scaling``. Weights (safetensors) are copied as is.

    python benchmarks/trl011_env.py [--path .venv-trl011] [--model_src DIR --model_dst DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TORCH = "torch==2.13.0"
# tokenizers is resolved by transformers 4.46.3 (<0.21); accelerate 1.x, datasets and tyro come
# unpinned with trl's own requirements; rich is imported by trl 0.11.4 but not declared by it.
PACKAGES = [TORCH, "trl==0.11.4", "transformers==4.46.3", "rich"]
EXPECT = {"torch": "2.13.0", "trl": "0.11.4", "transformers": "4.46.3"}
STAMP = ".posttrain-trl011-installed"
ROOT = Path(__file__).resolve().parent.parent

_CHECK = """
import json, accelerate, tokenizers, torch, transformers, trl
from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer  # noqa: F401
print(json.dumps({m.__name__: m.__version__ for m in (torch, trl, transformers, accelerate, tokenizers)}))
"""


def _run(cmd: list[str]) -> str:
    """Run quietly; on failure show the command's output and raise."""
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return proc.stdout


def env_versions(python: str) -> dict:
    """Versions of the stack as imported by ``python`` (also proves the imports work)."""
    out = _run([python, "-c", _CHECK])
    return json.loads(out.strip().splitlines()[-1])


def ensure_env(path: str | os.PathLike = ".venv-trl011") -> str:
    """Create (or reuse) the TRL 0.11.4 venv at ``path`` (relative to the repo root); return its python."""
    venv = Path(path)
    if not venv.is_absolute():
        venv = ROOT / venv
    python = venv / "bin" / "python"
    stamp = venv / STAMP
    wanted = "\n".join(PACKAGES) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return str(python)
    if venv.exists():  # incomplete or built for another package list: start over
        shutil.rmtree(venv)
    t0 = time.perf_counter()
    _run([sys.executable, "-m", "venv", str(venv)])
    (venv / ".gitignore").write_text("*\n")  # keep the venv out of git status (as Python 3.13's venv does)
    pip = [str(python), "-m", "pip", "install", "-q"]
    _run(pip + ["--upgrade", "pip"])
    _run(pip + [TORCH])
    _run(pip + PACKAGES)
    got = env_versions(str(python))
    bad = {k: (v, got.get(k, "").split("+")[0]) for k, v in EXPECT.items() if got.get(k, "").split("+")[0] != v}
    if bad:
        raise RuntimeError(f"wrong versions in {venv} (wanted, got): {bad}")
    stamp.write_text(wanted)
    print(f"built {venv} in {time.perf_counter() - t0:.0f}s: {got}", file=sys.stderr)
    return str(python)


def prepare_model_dir(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Copy a transformers-5 model + tokenizer dir into ``dst`` in a form transformers 4.46 loads."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    tok_path = dst / "tokenizer_config.json"
    if tok_path.exists():
        tok = json.loads(tok_path.read_text())
        tok["tokenizer_class"] = "PreTrainedTokenizerFast"
        tok.pop("backend", None)
        extra = tok.pop("extra_special_tokens", None)
        if isinstance(extra, list) and extra:
            tok.setdefault("additional_special_tokens", extra)
        elif isinstance(extra, dict):  # 4.x meaning: named extra tokens; not needed by the benchmark
            pass
        tok_path.write_text(json.dumps(tok, indent=2))
    cfg_path = dst / "config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        if "dtype" in cfg and "torch_dtype" not in cfg:
            cfg["torch_dtype"] = cfg["dtype"]
        rope = cfg.get("rope_parameters")
        if isinstance(rope, dict):
            if "rope_theta" in rope:
                cfg.setdefault("rope_theta", rope["rope_theta"])
            if rope.get("rope_type", "default") != "default":
                cfg.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
        cfg_path.write_text(json.dumps(cfg, indent=2))
    return str(dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", default=".venv-trl011")
    ap.add_argument("--model_src")
    ap.add_argument("--model_dst")
    args = ap.parse_args()
    t0 = time.perf_counter()
    python = ensure_env(args.path)
    print(json.dumps({"python": python, "seconds": round(time.perf_counter() - t0, 1),
                      "versions": env_versions(python)}))
    if args.model_src and args.model_dst:
        print(prepare_model_dir(args.model_src, args.model_dst))


if __name__ == "__main__":
    main()
