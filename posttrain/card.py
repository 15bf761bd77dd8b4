"""Model cards: a README.md written beside the weights at every save."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from importlib import metadata

_LIBRARIES = ("posttrain", "torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "safetensors")


def _versions() -> dict[str, str]:
    out = {}
    for lib in _LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = "not installed"
    out["python"] = platform.python_version()
    return out


def changed_hyperparameters(args) -> dict:
    """The config fields whose values differ from the defaults (what a reader needs to reproduce the run)."""
    defaults = {f.name: f.default for f in dataclasses.fields(args)
                if f.default is not dataclasses.MISSING}
    out = {}
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        if f.name.startswith("_") or f.name in ("output_dir", "logging_dir"):
            continue
        if f.name in defaults and value != defaults[f.name] and not callable(value):
            out[f.name] = value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
    return out


def write_model_card(output_dir: str, *, base_model: str, method: str, dataset: str | None, args,
                     metrics: dict | None = None, adapter: bool = False) -> str:
    """Write ``output_dir/README.md`` and return its path."""
    hyper = changed_hyperparameters(args)
    metrics = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in (metrics or {}).items()}
    lines = [
        "---",
        f"base_model: {base_model}",
        "library_name: " + ("peft" if adapter else "transformers"),
        f"tags: [posttrain, {method}]",
        "---",
        "",
        f"# {os.path.basename(os.path.abspath(output_dir))}",
        "",
        f"This model was trained with **posttrain** using **{method}** starting from `{base_model}`"
        + (f" on `{dataset}`." if dataset else "."),
        "The weights are stored in safetensors" + (" as a LoRA adapter." if adapter else "."),
        "",
        "## Final metrics",
        "",
        "```json", json.dumps(metrics, indent=2, sort_keys=True), "```",
        "",
        "## Hyperparameters (non-default)",
        "",
        "```json", json.dumps(hyper, indent=2, sort_keys=True, default=str), "```",
        "",
        "## Library versions",
        "",
        *[f"- {k}: {v}" for k, v in _versions().items()],
        "",
    ]
    path = os.path.join(output_dir, "README.md")
    os.makedirs(output_dir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    return path


def append_card_section(output_dir: str, title: str, lines: list[str]) -> str:
    """Add a ``## title`` section at the end of ``output_dir/README.md``, or replace that section's body
    where it is if the card already has one (the sections after it are kept)."""
    path = os.path.join(output_dir, "README.md")
    with open(path, encoding="utf-8") as fh:
        text = fh.read().rstrip("\n") + "\n"
    heading = f"## {title}\n"
    section = heading + "\n" + "\n".join(lines) + "\n"
    start = text.find("\n" + heading)
    if start < 0:
        text = text + "\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start + 1] + section + (text[end:] if end >= 0 else "")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def final_metrics(log_history: list[dict]) -> dict:
    """The most recent value of each logged number (what a model card and a run summary report)."""
    out = {}
    for entry in log_history:
        out.update({k: v for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return out
