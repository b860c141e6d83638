"""A run at a glance: ``report.html``, one self-contained page drawn from a run directory.

The page reads ``metrics.jsonl`` (the source of truth) and ``config.json``; its plots are PNG
images embedded as ``data:`` URIs and its only styling is inline CSS, so it opens offline, can
be mailed as one file, and runs no script. The log-scale switch is two radio buttons and a CSS
rule. Several runs are overlaid on the same axes, one colour per run.

Records of kinds other than ``train``, ``eval`` and ``sample`` (warnings, early stopping, ...)
are listed as notes with their step and text, and any key a record lacks is skipped, so logs
from older or newer versions still make a page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from gptrain.core.errors import GptrainError
from gptrain.core.oserrors import reason_and_fix
from gptrain.model.config import GPTConfig
from gptrain.model.gpt import GPTModel, count_parameters

REPORT_FILE = "report.html"
METRICS_FILE = "metrics.jsonl"
PLOTTED_EVENTS = {"train", "eval", "sample", "task"}
TASK_ACCURACIES = ("acc", "acc_norm")  # the benchmark scores plotted; perplexity gets its own panel


@dataclass
class RunLog:
    """One run directory, read."""

    path: Path
    name: str
    config: dict[str, Any]
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)  # benchmark scores (gptrain.evaluation.tasks)
    plans: list[dict[str, Any]] = field(default_factory=list)  # what each start or resume set out to do
    notes: list[dict[str, Any]] = field(default_factory=list)  # every other kind of record, in order


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def read_run(path: str | Path) -> RunLog:
    """Parse a run directory's ``metrics.jsonl`` and ``config.json``; unreadable lines become notes."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise GptrainError(f"{path} is not a directory: give a run directory written by gptrain train (its --out)")
    metrics = path / METRICS_FILE
    if not metrics.is_file():
        raise GptrainError(f"{path} holds no {METRICS_FILE}: give a run directory written by gptrain train (its --out)")
    run = RunLog(path, path.resolve().name, {})
    try:
        run.config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        run.notes.append({"event": "report", "text": "config.json is missing: the settings are unknown"})
    except (OSError, ValueError) as exc:
        run.notes.append({"event": "report", "text": f"config.json cannot be read: {exc}"})
    lines = metrics.read_text(encoding="utf-8", errors="replace").splitlines()
    by_kind = {"train": run.train, "eval": run.evals, "sample": run.samples, "plan": run.plans, "task": run.tasks}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            # A run killed mid-write leaves a partial last line; say so rather than refuse the page.
            run.notes.append({"event": "report", "text": f"{METRICS_FILE} line {number} is not a JSON record: skipped"})
            continue
        by_kind.get(record.get("event"), run.notes).append(record)
    return run


def _series(records: list[dict[str, Any]], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    points = [(_number(r.get(x_key)), _number(r.get(y_key))) for r in records]
    points = [(x, y) for x, y in points if x is not None and y is not None]
    return [x for x, _ in points], [y for _, y in points]


def _gaps(run: RunLog) -> tuple[list[float], list[float]]:
    points = [(_number(r.get("step")), _number(r.get("val_loss")), _number(r.get("train_loss"))) for r in run.evals]
    points = [(s, v - t) for s, v, t in points if None not in (s, v, t)]
    return [s for s, _ in points], [g for _, g in points]


def summarize(run: RunLog) -> dict[str, Any]:
    """The final figures of a run; a figure the log does not hold is None."""
    records = run.train + run.evals + run.samples + run.notes
    steps = [s for r in records if (s := _number(r.get("step"))) is not None]
    evals = [r for r in run.evals if _number(r.get("val_loss")) is not None]
    best = min(evals, key=lambda r: r["val_loss"], default=None)
    last = evals[-1] if evals else {}
    rates = [x for r in run.train if (x := _number(r.get("tokens_per_s"))) is not None]
    early = next((r for r in reversed(run.notes) if r.get("event") == "early_stop"), None)
    last_val, last_train = _number(last.get("val_loss")), _number(last.get("train_loss"))
    initial = next((r for r in run.evals if r.get("initial")), {})  # a transfer run's "before" figures
    train_config = run.config.get("train") if isinstance(run.config.get("train"), dict) else {}
    if early is not None:
        status = f"stopped early at step {early.get('step', '?')}"
    elif (run.path / "final").is_dir():
        status = "finished"
    else:
        status = "incomplete: no final/ checkpoint (still running, or stopped before the end)"
    return {
        "status": status,
        "steps": int(max(steps)) + 1 if steps else None,
        "epochs": max((e for r in run.evals + run.samples if (e := _number(r.get("epoch"))) is not None), default=None),
        "tokens_seen": max((int(t) for r in records if (t := _number(r.get("tokens_seen"))) is not None), default=None),
        "wall_time_s": max((t for r in records for key in ("elapsed_s", "wall_time_s")
                            if (t := _number(r.get(key))) is not None), default=None),
        "last_train_loss": last_train,
        "last_val_loss": last_val,
        "last_val_perplexity": _exp(last_val),
        "best_val_loss": best["val_loss"] if best else None,
        "best_val_perplexity": _exp(best["val_loss"]) if best else None,
        "best_step": best.get("step") if best else None,
        "last_gap": last_val - last_train if None not in (last_val, last_train) else None,
        "median_tokens_per_s": statistics.median(rates) if rates else None,
        "parameters": _parameters(run.config.get("model")),
        "init": train_config.get("init"),
        "init_sha256": train_config.get("init_sha256"),
        "lora_rank": train_config.get("lora_rank"),
        "initial_train_loss": _number(initial.get("train_loss")),
        "initial_val_loss": _number(initial.get("val_loss")),
        "peak_memory_mb": next((r["peak_memory_mb"] for r in reversed(run.notes)
                                if r.get("event") == "end" and isinstance(r.get("peak_memory_mb"), list)), None),
        **_economics(run, statistics.median(rates) if rates else None),
    }


def _economics(run: RunLog, tokens_per_s: float | None) -> dict[str, float | None]:
    """Achieved FLOP/s (training steps only), MFU where the peak is known, and the cost where a price was given."""
    plan = run.plans[-1] if run.plans else {}
    per_token = _number(plan.get("flops_per_token"))
    mfus = [x for r in run.train if (x := _number(r.get("mfu"))) is not None]
    costs = [c for r in run.notes if r.get("event") == "end" and (c := _number(r.get("cost"))) is not None]
    return {
        "achieved_flops_per_s": tokens_per_s * per_token if None not in (tokens_per_s, per_token) else None,
        "median_mfu": statistics.median(mfus) if mfus else None,
        "cost": sum(costs) if costs else None,  # a resumed run is billed for each of its sessions
    }


def _exp(loss: float | None) -> float | None:
    return None if loss is None else math.exp(min(loss, 700.0))


def _parameters(model_config: Any) -> int | None:
    if not isinstance(model_config, dict):
        return None
    import torch

    try:
        with torch.device("meta"):  # shapes only, no memory
            return count_parameters(GPTModel(GPTConfig.from_dict(model_config)))
    except (GptrainError, TypeError):
        return None


# --- Plots ---

def _figures(runs: list[RunLog]) -> dict[str, str]:
    """Base64 PNGs by name: losses against steps and tokens (linear and log), gap, lr, tokens/s, grad norm."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogFormatter

    single = len(runs) == 1
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def loss_axes(ax, x_key: str, log: bool) -> None:
        # One run: train in blue, val in orange. Several: a colour per run, val solid, train dashed.
        for i, run in enumerate(runs):
            train_color, val_color = (colors[0], colors[1]) if single else (colors[i % len(colors)],) * 2
            if single:
                xs, ys = _series(run.train, x_key, "loss")
                ax.plot(xs, ys, color=train_color, alpha=0.45, linewidth=0.8, label="train loss (each step)")
            xs, ys = _series(run.evals, x_key, "train_loss")
            ax.plot(xs, ys, color=train_color, linestyle="--", marker="." if single else None,
                    label="train loss (evaluation)" if single else None)
            xs, ys = _series(run.evals, x_key, "val_loss")
            ax.plot(xs, ys, color=val_color, marker="." if single else None, label="val loss" if single else run.name)
            if ys:
                best = ys.index(min(ys))
                ax.plot([xs[best]], [ys[best]], marker="*", markersize=12, color=val_color, linestyle="none",
                        label=f"best val {ys[best]:.3f}" if single else None)
            xs, ys = _series([r for r in run.evals if r.get("initial")], x_key, "val_loss")
            if ys:  # a transfer run's evaluation before its first update
                ax.plot(xs, ys, marker="D", markersize=7, color=val_color, linestyle="none", fillstyle="none",
                        label=f"initial val {ys[0]:.3f} (--init)" if single else None)
        if not single:
            ax.plot([], [], color="grey", label="val loss")
            ax.plot([], [], color="grey", linestyle="--", label="train loss (evaluation)")
            ax.plot([], [], color="grey", marker="*", markersize=10, linestyle="none", label="best val loss")
        if x_key == "step":
            _mark_notes(ax, runs)
        if log:
            ax.set_yscale("log")
            # Plain numbers (9.5, not 9.5 x 10^0), and labelled minor ticks: a loss rarely spans a decade.
            ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
            ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
        ax.set_xlabel({"step": "step", "tokens_seen": "tokens seen"}[x_key])
        ax.set_ylabel("loss (nats/token)" + (", log scale" if log else ""))
        _finish(ax, outside=not single)

    def per_run(ax, series_of, ylabel: str, zero_line: bool = False) -> None:
        for i, run in enumerate(runs):
            xs, ys = series_of(run)
            ax.plot(xs, ys, color=colors[i % len(colors)], marker="." if len(xs) < 60 else None, label=run.name)
        if zero_line:
            ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        _finish(ax, legend=not single, outside=True)

    images = {}
    for log in (False, True):
        for x_key in ("step", "tokens_seen"):
            fig, ax = plt.subplots(figsize=(6, 4))
            loss_axes(ax, x_key, log)
            images[f"loss_{x_key}_{'log' if log else 'linear'}"] = _png(fig)
    panels = {
        "gap": (_gaps, "val loss - train loss", True),
        "lr": (lambda run: _series(run.train, "step", "lr") if run.train else _series(run.evals, "step", "lr"),
               "learning rate", False),
        "tokens_per_s": (lambda run: _series(run.train, "step", "tokens_per_s"), "tokens / s", False),
        "grad_norm": (lambda run: _series(run.train, "step", "grad_norm"), "gradient norm (before clipping)", False),
    }
    for name, (series_of, ylabel, zero_line) in panels.items():
        fig, ax = plt.subplots(figsize=(6, 3.4))
        per_run(ax, series_of, ylabel, zero_line)
        images[name] = _png(fig)
    if any(run.tasks for run in runs):
        images.update(_task_figures(runs, plt, colors))
    return images


def _task_figures(runs: list[RunLog], plt, colors: list[str]) -> dict[str, str]:
    """Benchmark accuracies (with their standard errors) and perplexities against tokens seen."""
    images = {}
    for name, metrics, ylabel in (("task_acc", TASK_ACCURACIES, "accuracy"), ("task_perplexity", ("perplexity",),
                                                                                "perplexity (log scale)")):
        fig, ax = plt.subplots(figsize=(6, 4))
        line = 0
        for run in runs:
            for task in dict.fromkeys(str(r.get("task")) for r in run.tasks):
                records = [r for r in run.tasks if str(r.get("task")) == task]
                for metric in metrics:
                    xs, ys = _series(records, "tokens_seen", metric)
                    if not ys:
                        continue
                    errors = [_number(r.get(f"{metric}_stderr")) or 0.0 for r in records
                              if None not in (_number(r.get("tokens_seen")), _number(r.get(metric)))]
                    label = f"{task} {metric}" if len(runs) == 1 else f"{run.name}: {task} {metric}"
                    ax.errorbar(xs, ys, yerr=errors, color=colors[line % len(colors)], marker=".", capsize=2,
                                label=label)
                    line += 1
        if name == "task_perplexity":
            if not line:  # no lambada-like task: no empty panel
                plt.close(fig)
                continue
            ax.set_yscale("log")
        ax.set_xlabel("tokens seen")
        ax.set_ylabel(ylabel)
        _finish(ax, outside=True)
        images[name] = _png(fig)
    return images


def _mark_notes(ax, runs: list[RunLog]) -> None:
    """A vertical line at each warning and early stop, so the curve shows where they happened."""
    styles = {"warning": ("black", ":"), "early_stop": ("black", "--")}
    labelled = set()
    for run in runs:
        for note in run.notes:
            kind, step = note.get("event"), _number(note.get("step"))
            if kind in styles and step is not None:
                color, style = styles[kind]
                ax.axvline(step, color=color, linestyle=style, linewidth=1.2,
                           label=None if kind in labelled else kind.replace("_", " "))
                labelled.add(kind)


def _finish(ax, legend: bool = True, outside: bool = False) -> None:
    if not ax.lines or all(len(line.get_xdata()) == 0 for line in ax.lines):
        ax.text(0.5, 0.5, "no records", transform=ax.transAxes, ha="center", va="center", color="grey")
    elif legend and outside:  # several runs: below the axes, where it hides no curve
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    elif legend:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# --- The page ---

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 24px auto;
       max-width: 1280px; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 32px; border-bottom: 1px solid #ddd; }
.muted { color: #666; } table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.differs td { background: #fff6d6; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 12px; }
.grid img { width: 100%; height: auto; border: 1px solid #eee; }
/* The log-scale switch without a script: the radio buttons are siblings of the two plot grids. */
.log { display: none; } #scale-log:checked ~ .log { display: grid; } #scale-log:checked ~ .linear { display: none; }
.switch { margin: 8px 0; } .switch label { margin-right: 14px; } .switch .grid { margin-top: 8px; }
.note { padding: 6px 10px; margin: 4px 0; border-left: 4px solid #9bb; background: #f5fafa; }
.note.warning { border-color: #e0a800; background: #fff8e1; } .note.early_stop { border-color: #2b8a3e; background: #ebfbee; }
.sample { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 13px; } .newline { color: #aaa; }
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _megabytes(per_process: list[float] | None) -> str:
    return "–" if per_process is None else " / ".join(f"{mb:,.0f} MB" for mb in per_process)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = round(seconds) // 60
    return f"{minutes} min {round(seconds) % 60:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _flops(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _money(value: float | None) -> str:
    return "–" if value is None else f"{value:,.2f}"


def _img(images: dict[str, str], name: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{images[name]}">'


def _summary_table(runs: list[RunLog], summaries: list[dict[str, Any]]) -> str:
    rows = [("status", "status", str), ("steps", "steps", _fmt), ("epochs", "epochs", _fmt),
            ("tokens seen", "tokens_seen", _fmt), ("wall time", "wall_time_s", _duration),
            ("parameters", "parameters", _fmt), ("last train loss", "last_train_loss", _fmt),
            ("last val loss", "last_val_loss", _fmt), ("last val perplexity", "last_val_perplexity", _fmt),
            ("best val loss", "best_val_loss", _fmt), ("best val perplexity", "best_val_perplexity", _fmt),
            ("step of the best val loss", "best_step", _fmt), ("last gap (val - train)", "last_gap", _fmt),
            ("median tokens/s", "median_tokens_per_s", _fmt),
            ("peak memory per process", "peak_memory_mb", _megabytes),
            ("achieved FLOP/s", "achieved_flops_per_s", _flops), ("MFU", "median_mfu", _percent),
            ("cost", "cost", _money)]
    if any(s["init"] for s in summaries):
        rows += [("initialized from (--init)", "init", _fmt), ("its weights' sha256", "init_sha256", _fmt),
                 ("LoRA rank", "lora_rank", _fmt), ("initial train loss (before training)", "initial_train_loss", _fmt),
                 ("initial val loss (before training)", "initial_val_loss", _fmt)]
    head = "".join(f"<th>{html.escape(run.name)}</th>" for run in runs)
    body = "".join(
        f"<tr><th>{label}</th>" + "".join(f'<td class="num">{html.escape(show(s[key]))}</td>'
                                          for s in summaries) + "</tr>"
        for label, key, show in rows)
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def _notes(runs: list[RunLog]) -> str:
    items = []
    for run in runs:
        for note in run.notes:
            kind = str(note.get("event", "record without an event"))
            detail = note.get("text") or ", ".join(f"{k}={_fmt(v)}" for k, v in note.items() if k not in {"event", "step"})
            where = f"step {note['step']}: " if "step" in note else ""
            who = "" if len(runs) == 1 else f"{run.name}, "
            items.append(f'<div class="note {html.escape(kind)}"><b>{html.escape(who + kind)}</b> '
                         f"{html.escape(where + str(detail))}</div>")
    return "".join(items) or '<p class="muted">No warnings or other notes.</p>'


def sample_html(text: str) -> str:
    """A sample on as few lines as it takes: an early model often emits newline after newline, so each
    newline is shown as a mark instead of a line break."""
    return html.escape(text).replace("\n", '<span class="newline">↵</span>')


def _samples(runs: list[RunLog]) -> str:
    parts = []
    for run in runs:
        rows = "".join(f'<tr><td class="num">{_fmt(s.get("step"))}</td><td class="num">{_fmt(s.get("epoch"))}</td>'
                       f'<td class="sample">{sample_html(str(s.get("text", "")))}</td></tr>' for s in run.samples)
        table = (f"<table><tr><th>step</th><th>epoch</th><th>text</th></tr>{rows}</table>" if rows
                 else '<p class="muted">No samples.</p>')
        parts.append(table if len(runs) == 1 else
                     f"<details><summary>{html.escape(run.name)}: {len(run.samples)} sample(s)</summary>{table}</details>")
    return "".join(parts)


def _config(runs: list[RunLog]) -> str:
    parts = []
    for section in ("model", "train"):
        configs = [run.config.get(section) if isinstance(run.config.get(section), dict) else {} for run in runs]
        keys = list(dict.fromkeys(k for c in configs for k in c))
        if not keys:
            continue
        rows = []
        for key in keys:
            values = [json.dumps(c[key]) if key in c else "–" for c in configs]
            differs = ' class="differs"' if len(set(values)) > 1 else ""
            rows.append(f"<tr{differs}><th>{html.escape(key)}</th>"
                        + "".join(f"<td>{html.escape(v)}</td>" for v in values) + "</tr>")
        head = "".join(f"<th>{html.escape(run.name)}</th>" for run in runs)
        parts.append(f"<h3>{section}</h3><table><tr><th></th>{head}</tr>{''.join(rows)}</table>")
    other = {run.name: {k: v for k, v in run.config.items() if k not in {"model", "train"}} for run in runs}
    if any(other.values()):
        parts.append(f"<h3>other</h3><pre>{html.escape(json.dumps(other, indent=2))}</pre>")
    note = '<p class="muted">Rows that differ between runs are highlighted.</p>' if len(runs) > 1 else ""
    return note + ("".join(parts) or '<p class="muted">No config.json.</p>')


def render(runs: list[RunLog]) -> str:
    """The report page for one run, or the overlay of several, as an HTML string."""
    images = _figures(runs)
    summaries = [summarize(run) for run in runs]
    title = runs[0].name if len(runs) == 1 else f"{len(runs)} runs: " + ", ".join(run.name for run in runs)
    places = "<br>".join(html.escape(str(run.path.resolve())) for run in runs)
    loss_grid = lambda scale: (f'<div class="grid {scale}">'
                               + _img(images, f"loss_step_{scale}", f"loss against steps ({scale})")
                               + _img(images, f"loss_tokens_seen_{scale}", f"loss against tokens seen ({scale})")
                               + "</div>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>gptrain report: {html.escape(title)}</title>
<style>{STYLE}</style></head>
<body>
<h1>gptrain report: {html.escape(title)}</h1>
<p class="muted">{places}<br>generated {time.strftime("%Y-%m-%d %H:%M:%S")} from metrics.jsonl and config.json</p>
<h2>Final metrics</h2>
{_summary_table(runs, summaries)}
<h2>Notes</h2>
{_notes(runs)}
<h2>Loss</h2>
<p class="muted">Training loss falling while validation loss rises is the lecture's sign of memorising: the
best model is the one with the lowest validation loss (the star), saved in best/.</p>
<div class="switch">
<span>y axis:</span>
<input type="radio" name="scale" id="scale-linear" checked><label for="scale-linear">linear</label>
<input type="radio" name="scale" id="scale-log"><label for="scale-log">log</label>
{loss_grid("linear")}
{loss_grid("log")}
</div>
<h2>Train-val gap, learning rate, throughput</h2>
<div class="grid">
{_img(images, "gap", "validation loss minus training loss at each evaluation")}
{_img(images, "lr", "learning rate")}
{_img(images, "tokens_per_s", "tokens per second")}
{_img(images, "grad_norm", "gradient norm")}
</div>
{_tasks_section(images)}<h2>Samples</h2>
{_samples(runs)}
<h2>Config</h2>
{_config(runs)}
</body></html>
"""


def _tasks_section(images: dict[str, str]) -> str:
    if "task_acc" not in images:
        return ""
    return ('<h2>Benchmarks</h2>\n<p class="muted">Scores of --eval-task benchmarks (gptrain.evaluation.tasks) during training, '
            'with their standard errors.</p>\n<div class="grid">'
            + _img(images, "task_acc", "benchmark accuracy against tokens seen")
            + (_img(images, "task_perplexity", "benchmark perplexity against tokens seen")
               if "task_perplexity" in images else "") + "</div>\n")


def _unique_names(runs: list[RunLog]) -> None:
    """Name runs by their folder, with parent folders added only where two names would be the same."""
    parts = [run.path.resolve().parts for run in runs]
    depths = [1] * len(runs)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depths)]
        clashing = [i for i, name in enumerate(names) if names.count(name) > 1 and depths[i] < len(parts[i])]
        if not clashing:
            break
        for i in clashing:
            depths[i] += 1
    for run, name in zip(runs, names):
        run.name = name


def write_report(runs: str | Path | Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write the report of one run directory (to ``RUN_DIR/report.html`` by default) or of several
    overlaid (to ``./report.html`` by default); returns the path. The file is written under a
    temporary name and renamed, so a reader never sees half a page."""
    paths = [runs] if isinstance(runs, (str, Path)) else list(runs)
    if not paths:
        raise GptrainError("give at least one run directory")
    logs = [read_run(p) for p in paths]
    _unique_names(logs)
    out = Path(out) if out is not None else (logs[0].path / REPORT_FILE if len(logs) == 1 else Path(REPORT_FILE))
    page = render(logs)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise GptrainError(f"cannot write {out}: {reason_and_fix(exc)}") from None
    return out
