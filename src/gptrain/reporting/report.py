"""A run at a glance: ``report.html``, one self-contained page drawn from a run directory.

The page reads ``metrics.jsonl`` (the source of truth) and ``config.json``; its plots are PNG
images embedded as ``data:`` URIs and its only styling is inline CSS, so it opens offline, can
be mailed as one file, and runs no script. The log-scale switch is two radio buttons and a CSS
rule. Several runs are overlaid on the same axes, one colour per run.

The records are read in :mod:`gptrain.reporting.runs` and drawn in :mod:`gptrain.reporting.figures`;
this module lays out the page: the summary table, the notes (warnings, early stopping, ... with
their step and text), the plots, the samples and the settings.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any, Sequence

from gptrain.core.errors import GptrainError
from gptrain.core.files import write_text_atomic
from gptrain.core.formatting import duration
from gptrain.core.oserrors import reason_and_fix
from gptrain.reporting.figures import figures
from gptrain.reporting.runs import RunLog, finite_number, read_run, summarize

REPORT_FILE = "report.html"

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
    return "–" if seconds is None else duration(seconds)


def _flops(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


SPLIT_LABELS = {"startup": "start-up", "steps": "training steps", "evaluation": "evaluation",
                "sampling": "sampling", "checkpoints": "checkpoint writes", "other": "the rest"}


def _time_split(split: dict[str, Any] | None) -> str:
    if not split:
        return "–"
    return ", ".join(f"{SPLIT_LABELS.get(name, name)} {duration(seconds)}" for name, seconds in split.items()
                     if isinstance(seconds, (int, float)))


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
            ("MFU of all the steps", "steps_mfu", _percent), ("MFU measured against", "peak_source", _fmt),
            ("where the wall time went", "time_split_s", _time_split),
            ("before train(): interpreter, imports", "before_train_s", _duration),
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


def render(runs: list[RunLog], images: dict[str, str] | None = None) -> str:
    """The report page for one run, or the overlay of several, as an HTML string; ``images``, the
    runs' :func:`figures` when they were drawn already."""
    images = figures(runs) if images is None else images
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
{_tasks_section(images)}{_classification_section(runs)}<h2>Samples</h2>
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


def _classification_section(runs: list[RunLog]) -> str:
    """A classifier's accuracy on each split and its confusion tables (gptrain finetune classify)."""
    parts = []
    for run in runs:
        for record in run.classification:
            labels, matrix = record.get("labels") or [], record.get("confusion") or []
            head = "".join(f"<th>{html.escape(str(label))}</th>" for label in labels)
            rows = "".join(f"<tr><th>{html.escape(str(label))}</th>"
                           + "".join(f'<td class="num">{_fmt(count)}</td>' for count in row) + "</tr>"
                           for label, row in zip(labels, matrix))
            who = "" if len(runs) == 1 else f"{run.name}, "
            parts.append(f"<h3>{html.escape(who + str(record.get('split')))}: accuracy "
                         f"{_percent(finite_number(record.get('accuracy')))} of {_fmt(record.get('examples'))} texts</h3>"
                         f"<table><tr><th>true \\ predicted</th>{head}</tr>{rows}</table>")
    if not parts:
        return ""
    return ('<h2>Classification</h2>\n<p class="muted">Confusion tables: a row per true label, a column per '
            'predicted label.</p>\n' + "".join(parts) + "\n")


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


def run_figures(run_dir: str | Path) -> dict[str, str]:
    """The plots of one run's report, drawn now from the records logged so far: they show steps,
    evaluations and notes, not the end record, so a run draws them while its last checkpoint is written."""
    return figures([read_run(run_dir)])


def write_report(runs: str | Path | Sequence[str | Path], out: str | Path | None = None, *,
                 images: dict[str, str] | None = None) -> Path:
    """Write the report of one run directory (to ``RUN_DIR/report.html`` by default) or of several
    overlaid (to ``./report.html`` by default); returns the path. The file is written under a
    temporary name and renamed, so a reader never sees half a page. ``images``: the runs' plots, drawn
    earlier by :func:`run_figures` (the records they show must not have changed since)."""
    paths = [runs] if isinstance(runs, (str, Path)) else list(runs)
    if not paths:
        raise GptrainError("give at least one run directory")
    logs = [read_run(p) for p in paths]
    _unique_names(logs)
    out = Path(out) if out is not None else (logs[0].path / REPORT_FILE if len(logs) == 1 else Path(REPORT_FILE))
    page = render(logs, images)
    try:
        write_text_atomic(out, page)
    except OSError as exc:
        raise GptrainError(f"cannot write {out}: {reason_and_fix(exc)}") from None
    return out
