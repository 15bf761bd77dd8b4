"""The ``posttrain demo`` report: plots and one self-contained HTML page from ``results.json``.

``write_report(results, output_dir)`` draws four PNG plots (PPO reward/KL, loss curves, the
reward-vs-KL frontier, judges' ratings) and writes ``report.html`` with everything inlined (CSS, images as
``data:`` URIs), so the page works offline (``posttrain.eval.browser`` checks it in chromium).

``results`` is what ``posttrain demo`` writes to ``results.json``: ``model``, ``machine``,
``total_seconds``, ``eval_prompts``; ``stages[name]`` with ``seconds``, ``summary`` and either a
``history`` (pretrain, sft, reward: logged entries) or ``runs`` (ppo, dpo: ``label``, ``setting``,
``dir``, ``history`` and ``path``, the held-out evaluations along training) plus the ``main`` run's
label; and ``evaluations``, one per model (``name``, ``method``, ``label``, ``main``, ``rm_score``,
``sentiment``, ``kl`` to SFT, ``length`` and ``samples`` for the same prompts); and ``judges``, per
judge (``"reward model"``, ``"sentiment rule"``) ``baseline``, ``prompts``, ``win_rates`` (model name ->
``rate``, ``low``, ``high``, ``n``, ``confidence``: against the baseline) and ``ratings`` (model name ->
``[rating, low, high]``), with ``judges_not_run`` saying why when there are none. Any stage may be
absent; the report then says "not run".
"""

from __future__ import annotations

import base64
import html
import os
import pathlib

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

STAGE_NAMES = {"pretrain": "Pretrain", "sft": "SFT", "reward": "Reward model", "ppo": "PPO", "dpo": "DPO"}
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
PPO_COLOUR, DPO_COLOUR, SFT_COLOUR = "#1f77b4", "#d62728", "#333333"


def _pretty(label) -> str:
    return "" if label is None else str(label).replace("beta=", "β=")


def _num(value, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _duration(seconds) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.1f} s" if seconds < 59.95 else f"{round(seconds) // 60} min {round(seconds) % 60} s"


def _series(history: list[dict], key: str) -> tuple[list, list]:
    rows = [h for h in history or [] if h.get(key) is not None]
    return [h.get("step", i) for i, h in enumerate(rows)], [h[key] for h in rows]


def _save(fig: Figure, path: str) -> str:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


# ---------------------------------------------------------------- plots

def plot_ppo(ppo: dict | None, path: str) -> str | None:
    """Reward-model score and KL to SFT over PPO steps, one line per run, the main run emphasised."""
    runs = [r for r in (ppo or {}).get("runs", []) if _series(r.get("history"), "reward")[0]]
    if not runs:
        return None
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for i, run in enumerate(runs):
        main = run.get("label") == ppo.get("main")
        style = dict(color=COLOURS[i % len(COLOURS)], lw=2.6 if main else 1.2, alpha=1 if main else 0.75,
                     zorder=3 if main else 2, label=_pretty(run.get("label")) + (" (main)" if main else ""))
        for ax, key in zip(axes, ("reward", "kl_sum")):  # KL in nats per completion, as the frontier
            ax.plot(*_series(run["history"], key), **style)
    for ax, title in zip(axes, ("Reward-model score of the rollouts", "KL to the SFT model (nats)")):
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=9, title="PPO run", title_fontsize=9)
    return _save(fig, path)


def plot_losses(stages: dict, path: str) -> str | None:
    """Small multiples of the training losses: pretrain, SFT, reward model (+ eval loss), DPO runs."""
    panels = []  # (title, [(label, steps, values, style)])
    for name in ("pretrain", "sft", "reward"):
        history = (stages.get(name) or {}).get("history")
        lines = [("train loss", *_series(history, "loss"), dict(color=COLOURS[0], lw=1.6))]
        if name == "reward":
            lines.append(("eval loss", *_series(history, "eval_loss"),
                          dict(color=COLOURS[1], marker="o", ls="none", ms=6, zorder=3)))
        if any(steps for _, steps, _, _ in lines):
            panels.append((STAGE_NAMES[name], lines))
    dpo = stages.get("dpo") or {}
    lines = []
    for i, run in enumerate(dpo.get("runs", [])):
        main = run.get("label") == dpo.get("main")
        lines.append((_pretty(run.get("label")) + (" (main)" if main else ""), *_series(run.get("history"), "loss"),
                      dict(color=COLOURS[i % len(COLOURS)], lw=2.4 if main else 1.2)))
    if any(steps for _, steps, _, _ in lines):
        panels.append(("DPO", lines))
    if not panels:
        return None
    ncols = min(len(panels), 2)
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(10, 3.1 * nrows), layout="constrained")
    for k, (title, lines) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        for label, steps, values, style in lines:
            if steps:
                ax.plot(steps, values, label=label, **style)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8)
    return _save(fig, path)


def _kl_rm(points) -> tuple[list, list]:
    points = [e for e in points or [] if e.get("kl") is not None and e.get("rm_score") is not None]
    return [e["kl"] for e in points], [e["rm_score"] for e in points]


def plot_frontier(results: dict, path: str) -> str | None:
    """Reward vs KL to SFT on held-out prompts: each PPO / DPO run's final model as a big marker and its
    ``path`` during training as a thin line with faded markers; SFT is the reference (KL 0). KL is symlog."""
    stages = results.get("stages") or {}
    points = [e for e in results.get("evaluations") or [] if e.get("method") in ("ppo", "dpo", "sft")
              and e.get("kl") is not None and e.get("rm_score") is not None]
    if not any(e["method"] in ("ppo", "dpo") for e in points):
        return None
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    styles = {"ppo": dict(color=PPO_COLOUR, marker="o", label="PPO (final)"),
              "dpo": dict(color=DPO_COLOUR, marker="s", label="DPO (final)"),
              "sft": dict(color=SFT_COLOUR, marker="*", label="SFT (reference)")}
    kls = [e["kl"] for e in points]  # finals and path points: the extent of the KL axis
    for method in ("ppo", "dpo"):  # the paths first, under the finals
        for run in (stages.get(method) or {}).get("runs", []):
            x, y = _kl_rm(run.get("path"))
            if len(x) > 1:  # the last point is the final model, drawn big below
                ax.plot(x, y, color=styles[method]["color"], marker=styles[method]["marker"], lw=0.9, ms=4,
                        alpha=0.4, markevery=list(range(len(x) - 1)), zorder=2)
                kls += x
    for method in ("sft", "ppo", "dpo"):
        group = [e for e in points if e["method"] == method]
        if not group:
            continue
        style = styles[method]
        main = [bool(e.get("main")) and method != "sft" for e in group]
        ax.scatter(*_kl_rm(group), edgecolors="black", zorder=3,
                   s=[160 if method == "sft" else 110 if m else 60 for m in main],
                   linewidths=[1.6 if m else 0.5 for m in main], **style)
        for i, e in enumerate(group):
            text = "SFT" if method == "sft" else _pretty(e.get("label") or e.get("name"))
            # Labels alternate above and below their marker, so runs that end close together stay readable.
            ax.annotate(text, (e["kl"], e["rm_score"]), xytext=(6, 5 if i % 2 == 0 else -13),
                        textcoords="offset points",
                        fontsize=8.5, color=style["color"], zorder=4)
        if method == "sft":
            ax.axhline(group[0]["rm_score"], color=SFT_COLOUR, ls=":", lw=1, zorder=1)
    if len(kls) > len(points):  # some run had a path: a legend entry for it
        ax.plot([], [], color="grey", marker="o", lw=0.9, ms=4, alpha=0.6, label="path during training")
    xlabel = "KL to the SFT model (nats per completion)"
    if max(kls) > 2:  # early PPO probes can sit at 10x the finals' KL: log above 1 nat keeps the finals apart
        ax.set_xscale("symlog", linthresh=1)
        ticks = [t for t in (0, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if t <= 1.3 * max(kls)]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        xlabel = xlabel[:-1] + ", log scale above 1)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("reward-model score (held-out prompts)")
    ax.set_title("Reward vs KL frontier", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="best")  # usually upper left: low KL + high reward is out of reach
    ax.margins(x=0.08, y=0.12)
    return _save(fig, path)


def plot_ratings(results: dict, path: str) -> str | None:
    """Bradley-Terry ratings (Elo scale) of every model with 95% bootstrap intervals, one marker per judge,
    models top to bottom in the order they were evaluated."""
    judges = {k: v for k, v in (results.get("judges") or {}).items() if v.get("ratings")}
    if not judges:
        return None
    names = list(dict.fromkeys(n for v in judges.values() for n in v["ratings"]))
    fig = Figure(figsize=(8, 1.4 + 0.42 * len(names)), layout="constrained")
    ax = fig.subplots()
    markers = ["o", "D", "s", "^"]
    offsets = [0.16 * (k - (len(judges) - 1) / 2) for k in range(len(judges))]
    for k, (judge, verdict) in enumerate(judges.items()):
        rows = [(i, verdict["ratings"][n]) for i, n in enumerate(names) if n in verdict["ratings"]]
        y = [i + offsets[k] for i, _ in rows]
        x = [r[0] for _, r in rows]
        err = [[r[0] - r[1] for _, r in rows], [r[2] - r[0] for _, r in rows]]
        ax.errorbar(x, y, xerr=err, fmt=markers[k % len(markers)], color=COLOURS[k % len(COLOURS)], capsize=3,
                    ms=6, lw=1.3, label=f"judged by the {judge}")
    baseline = next((v.get("baseline") for v in judges.values() if v.get("baseline")), None)
    ax.set_yticks(range(len(names)), [_pretty(n) + (" (baseline)" if n == baseline else "") for n in names])
    ax.set_ylim(len(names) - 0.5, -0.5)  # the first evaluated model on top
    ax.axvline(1000, color="grey", ls=":", lw=1, zorder=1)
    ax.set_xlabel("Bradley–Terry rating (Elo scale, mean 1000), 95% bootstrap interval")
    ax.set_title("Ratings of every model by each judge", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    return _save(fig, path)


# ---------------------------------------------------------------- html

CSS = """
body { font-family: system-ui, sans-serif; color: #1d1d1f; background: #fafafa; margin: 0; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { margin: 0 0 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta, figcaption { color: #555; font-size: 14px; } .notrun { color: #999; font-style: italic; }
table { border-collapse: collapse; width: 100%; font-size: 14px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 6px 9px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; } tr:nth-child(even) td { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.main td { background: #fff7df !important; font-weight: 600; }
.stages th:nth-child(1) { width: 9em; } .stages th:nth-child(2) { width: 6.5em; }
.samples th:first-child { width: 18%; } .prompt { font-style: italic; }
table.judges th { text-align: center; } table.judges td small { color: #666; }
figure { margin: 20px 0; } figure img { max-width: 100%; display: block; margin: 0 auto 6px; }
.score { padding: 0 6px; border-radius: 4px; font-size: 12px; }
.pos { background: #dcf3dc; } .neg { background: #f8dddd; }
code { background: #f0f2f5; padding: 1px 4px; border-radius: 3px; }
"""

# A tiny honest check for check_in_browser: how many images really decoded, and the page height.
SCRIPT = """window.addEventListener("load", function () {
  var n = 0; for (var img of document.images) { if (img.complete && img.naturalWidth > 0) n++; }
  document.body.dataset.imagesLoaded = n; document.body.dataset.imagesTotal = document.images.length;
  document.body.dataset.pageHeight = document.documentElement.scrollHeight;
});"""

PLOTS = [  # (file, title, plot function, what it reads, caption)
    ("ppo_reward_kl.png", "PPO: reward and KL during training", plot_ppo, "ppo",
     "PPO against the reward model: the reward-model score of the sampled completions (left) and their KL "
     "to the SFT model (right) per PPO step, one line per KL coefficient; the main run is drawn thicker."),
    ("losses.png", "Training losses", plot_losses, "stages",
     "Training losses of each stage. Reward model: pairwise train loss, with the held-out eval loss as points. "
     "DPO: one line per β."),
    ("frontier.png", "Reward vs KL frontier (held-out prompts)", plot_frontier, "results",
     "The reward-vs-KL frontier on held-out prompts, a miniature of the IMDb sentiment experiment of the DPO "
     "paper (Rafailov et al. 2023, Fig. 2 left). Each big marker is one run's final model at one KL coefficient "
     "(PPO) or β (DPO); the thin line through faded markers shows where that run was at evenly spaced steps "
     "during training. Up and to the left is better: more reward for less divergence from the SFT model (the "
     "star, KL 0; the dotted line is its score). Main runs have a thick edge; the KL axis is logarithmic above 1."),
]
JUDGE_PLOTS = [  # drawn in the "Win rates and ratings" section, embedded like PLOTS
    ("ratings.png", "Ratings", plot_ratings, "results",
     "Bradley–Terry ratings of every model on the Elo scale (mean 1000; 400 points apart is 10:1 odds of "
     "winning), from every pair of models on every held-out prompt, with 95% bootstrap intervals; one marker "
     "per judge. The two judges' scales are fitted separately."),
]


def _esc(value) -> str:
    return html.escape("" if value is None else str(value))


def _table(header: list[str], rows: list[str], cls: str = "") -> str:
    return (f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{h}</th>" for h in header) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _figure(output_dir: str, inputs: dict, filename: str, title: str, plot, key: str, caption: str) -> str:
    """A plot as a heading and an inlined PNG (data: URI), or "not run" when there is no data for it."""
    path = plot(inputs[key], os.path.join(output_dir, filename))
    if path is None:
        return f'<h3>{_esc(title)}</h3><p class="notrun">not run (no data for this plot yet)</p>'
    png = base64.b64encode(pathlib.Path(path).read_bytes()).decode("ascii")
    return (f'<h3>{_esc(title)}</h3><figure><img src="data:image/png;base64,{png}" alt="{_esc(filename)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def _percent(rate: dict) -> str:
    return (f'{rate["rate"]:.1%} <small>({rate["low"]:.1%}–{rate["high"]:.1%}), '
            f'n={rate["n"]}</small>')


def _judges_section(results: dict) -> str:
    """One table: per model, the win rate against the baseline and the rating, for each judge."""
    judges = {k: v for k, v in (results.get("judges") or {}).items() if v.get("ratings")}
    if not judges:
        why = results.get("judges_not_run")
        return f'<p class="notrun">not run{f" ({_esc(why)})" if why else ""}</p>'
    baseline = next(iter(judges.values())).get("baseline", "the baseline")
    names = list(dict.fromkeys(n for v in judges.values() for n in v["ratings"]))
    heads = "".join(f"<th>{_esc(j)}</th>" for j in judges)
    rows = []
    for name in names:
        cells = [f"<td>{_esc(_pretty(name))}</td>"]
        for verdict in judges.values():
            rate = (verdict.get("win_rates") or {}).get(name)
            cells.append('<td class="num">baseline</td>' if name == verdict.get("baseline")
                         else f'<td class="num">{_percent(rate)}</td>' if rate else '<td class="num">—</td>')
        for verdict in judges.values():
            r = verdict["ratings"].get(name)
            cells.append(f'<td class="num">{r[0]:.0f} <small>({r[1]:.0f}–{r[2]:.0f})</small></td>' if r
                         else '<td class="num">—</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="judges"><thead><tr><th rowspan="2">Model</th>'
            f'<th colspan="{len(judges)}">Win rate vs {_esc(baseline)} (95% interval, n prompts)</th>'
            f'<th colspan="{len(judges)}">Bradley–Terry rating (95% interval)</th></tr>'
            f"<tr>{heads}{heads}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _main_eval(evaluations: list[dict], method: str) -> dict | None:
    group = [e for e in evaluations if e.get("method") == method]
    return next((e for e in group if e.get("main")), group[0] if group else None)


def _score(value) -> str:
    if value is None:
        return ""
    return f'<br><span class="score {"pos" if value >= 0 else "neg"}">RM {value:+.2f}</span>'


def _stage_rows(stages: dict) -> list[str]:
    rows = []
    for key, name in STAGE_NAMES.items():
        stage = stages.get(key)
        if stage is None:
            rows.append(f'<tr><td>{name}</td><td class="num">—</td><td class="notrun">not run</td></tr>')
            continue
        extra = ""
        if stage.get("runs"):
            labels = ", ".join(_pretty(r.get("label")) for r in stage["runs"])
            extra = f'<br><small>runs: {_esc(labels)}; main: {_esc(_pretty(stage.get("main")))}</small>'
        summary = "<br>".join(_esc(line.strip()) for line in str(stage.get("summary") or "").split("\n"))
        rows.append(f'<tr><td>{name}</td><td class="num">{_duration(stage.get("seconds"))}</td>'
                    f'<td>{summary}{extra}</td></tr>')
    return rows


def _eval_rows(evaluations: list[dict]) -> list[str]:
    rows = []
    for e in evaluations:
        main = bool(e.get("main")) and e.get("method") in ("ppo", "dpo")
        model = STAGE_NAMES.get(e.get("method"), e.get("method")) + (" ★ main" if main else "")
        rows.append(f'<tr class="{"main" if main else ""}"><td>{_esc(model)}</td>'
                    f'<td>{_esc(_pretty(e.get("label")) or "—")}</td><td class="num">{_num(e.get("rm_score"))}</td>'
                    f'<td class="num">{_num(e.get("sentiment"))}</td><td class="num">{_num(e.get("kl"))}</td>'
                    f'<td class="num">{_num(e.get("length"), 1)}</td></tr>')
    return rows


def _samples_table(evaluations: list[dict], limit: int = 6) -> str:
    columns = [(name, e) for name, e in (("SFT", _main_eval(evaluations, "sft")),
                                         ("PPO", _main_eval(evaluations, "ppo")),
                                         ("DPO", _main_eval(evaluations, "dpo"))) if e and e.get("samples")]
    if not columns:
        return '<p class="notrun">not run (no evaluated samples)</p>'
    header = ["Prompt"] + [f"{name}" + (f" ({_esc(_pretty(e.get('label')))})" if e.get("label") else "")
                           for name, e in columns]
    rows = []
    for i, sample in enumerate(columns[0][1]["samples"][:limit]):
        cells = [f'<td class="prompt">{_esc(sample.get("prompt"))}</td>']
        for _, e in columns:
            s = e["samples"][i] if i < len(e["samples"]) else {}
            cells.append(f'<td>{_esc(s.get("completion"))}{_score(s.get("rm_score"))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return _table(header, rows, "samples")


def write_report(results: dict, output_dir: str) -> str:
    """Write the plots and ``report.html`` (self-contained) into ``output_dir``; return the html path."""
    os.makedirs(output_dir, exist_ok=True)
    stages = results.get("stages") or {}
    evaluations = results.get("evaluations") or []
    inputs = {"ppo": stages.get("ppo"), "stages": stages, "results": results}
    figures = [_figure(output_dir, inputs, *plot) for plot in PLOTS]
    judge_figures = [_figure(output_dir, inputs, *plot) for plot in JUDGE_PLOTS]
    judged = results.get("judges") or {}
    prompts = next((v.get("prompts") for v in judged.values()), None) or results.get("eval_prompts", "—")
    judge_names = " and ".join(f"the {j}" for j in judged) or "the judges"
    baseline = next((v.get("baseline") for v in judged.values() if v.get("baseline")), "SFT")
    ran = [name for key, name in STAGE_NAMES.items() if key in stages]
    missing = [name for key, name in STAGE_NAMES.items() if key not in stages]
    dirs = [key for key in ("pretrain", "sft", "reward") if key in stages]  # the stage's own directory
    dirs += [r["dir"] for key in ("ppo", "dpo") for r in (stages.get(key) or {}).get("runs", []) if r.get("dir")]
    machine, total = _esc(results.get("machine", "unknown machine")), _duration(results.get("total_seconds"))
    intro = (
        f"The demo post-trains the tiny model <code>{_esc(results.get('model'))}</code> end to end on one "
        "machine: it <b>pretrains</b> it on review text, <b>fine-tunes</b> it (SFT) to continue review openings, "
        "trains a <b>reward model</b> on preference pairs that favour positive continuations, then optimises the "
        "SFT model with <b>PPO</b> against the reward model with a KL penalty to the SFT model (several KL "
        "coefficients) and, separately, with <b>DPO</b> directly on the preference pairs (several β). Every model "
        f"is evaluated on {_esc(results.get('eval_prompts', '—'))} held-out prompts: reward-model score, an "
        "independent sentiment score, KL to the SFT model and completion length."
        + (f" Stages not run: {_esc(', '.join(missing))}." if missing else ""))
    cards = ("".join(f"<li><code>{_esc(d)}</code></li>" for d in dirs) or '<li class="notrun">none yet</li>')
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>posttrain demo report</title><style>{CSS}</style></head>
<body><main>
<h1>posttrain demo report</h1>
<p class="meta">Model <code>{_esc(results.get('model'))}</code> · {machine} · total time {total}
 · stages run: {_esc(', '.join(ran) or 'none')}</p>
<p>{intro}</p>
<h2>Stages</h2>
{_table(["Stage", "Time", "Result"], _stage_rows(stages), "stages")}
<h2>Held-out evaluation</h2>
<p>Means over {_esc(results.get('eval_prompts', '—'))} held-out prompts. KL is to the SFT model, in nats per
completion. ★ marks the main PPO and DPO runs, whose samples are shown below.</p>
{_table(["Model", "Setting", "RM score", "Sentiment", "KL to SFT", "Length (tokens)"], _eval_rows(evaluations))
 if evaluations else '<p class="notrun">not run</p>'}
<h2>Win rates and ratings</h2>
<p>Every model's completions of the {_esc(prompts)} held-out prompts (the held-out evaluation's samples: nothing
is sampled again), judged pairwise, prompt by prompt, by {_esc(judge_names)} (the reward model is what PPO
optimised; the VADER sentiment rule is the ground truth it approximates). A <b>win rate</b> is the share of
prompts on which the judge prefers the model's completion to {_esc(baseline)}'s, ties counting half, with a
Wilson 95% interval; a <b>rating</b> is a Bradley–Terry strength fitted to every pair of models on every prompt,
on the Elo scale (mean 1000), with a 95% bootstrap interval.</p>
{_judges_section(results)}
{"".join(judge_figures)}
<h2>Plots</h2>
{"".join(figures)}
<h2>Before / after: samples</h2>
<p>The same held-out prompts completed by the SFT model and the main PPO and DPO runs, with reward-model scores.</p>
{_samples_table(evaluations)}
<h2>Models and model cards</h2>
<p>Each saved model directory has a <code>README.md</code> model card (method, base model, hyperparameters,
metrics, library versions; the PPO, DPO, SFT and pretrained models also their held-out evaluation).
Model directories, relative to the report:</p>
<ul>{cards}</ul>
<p class="meta">Machine: {machine}. Total time: {total}.</p>
</main><script>{SCRIPT}</script></body></html>
"""
    html_path = os.path.join(output_dir, "report.html")
    with open(html_path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return html_path
