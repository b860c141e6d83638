"""The report's plots, as base64 PNGs: losses, the train-val gap, learning rate, throughput,
gradient norm and benchmark scores, one colour per run when several are overlaid."""

from __future__ import annotations

import base64
import io

from gptrain.reporting.runs import RunLog, finite_number, gaps, series

TASK_ACCURACIES = ("acc", "acc_norm")  # the benchmark scores plotted; perplexity gets its own panel


def figures(runs: list[RunLog]) -> dict[str, str]:
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
                xs, ys = series(run.train, x_key, "loss")
                ax.plot(xs, ys, color=train_color, alpha=0.45, linewidth=0.8, label="train loss (each step)")
            xs, ys = series(run.evals, x_key, "train_loss")
            ax.plot(xs, ys, color=train_color, linestyle="--", marker="." if single else None,
                    label="train loss (evaluation)" if single else None)
            xs, ys = series(run.evals, x_key, "val_loss")
            ax.plot(xs, ys, color=val_color, marker="." if single else None, label="val loss" if single else run.name)
            if ys:
                best = ys.index(min(ys))
                ax.plot([xs[best]], [ys[best]], marker="*", markersize=12, color=val_color, linestyle="none",
                        label=f"best val {ys[best]:.3f}" if single else None)
            xs, ys = series([r for r in run.evals if r.get("initial")], x_key, "val_loss")
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
        "gap": (gaps, "val loss - train loss", True),
        "lr": (lambda run: series(run.train, "step", "lr") if run.train else series(run.evals, "step", "lr"),
               "learning rate", False),
        "tokens_per_s": (lambda run: series(run.train, "step", "tokens_per_s"), "tokens / s", False),
        "grad_norm": (lambda run: series(run.train, "step", "grad_norm"), "gradient norm (before clipping)", False),
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
                    xs, ys = series(records, "tokens_seen", metric)
                    if not ys:
                        continue
                    errors = [finite_number(r.get(f"{metric}_stderr")) or 0.0 for r in records
                              if None not in (finite_number(r.get("tokens_seen")), finite_number(r.get(metric)))]
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
            kind, step = note.get("event"), finite_number(note.get("step"))
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
