import base64
import html
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from gptrain.cli import main
from gptrain.core import files as files_module
from gptrain.model.config import GPTConfig
from gptrain.model.gpt import GPTModel, count_parameters
from gptrain.reporting import report as report_module
from gptrain.reporting.report import sample_html, write_report
from gptrain.reporting.runs import read_run, summarize

RUN_COLOURS = {"blue": (31, 119, 180), "orange": (255, 127, 14), "green": (44, 160, 44)}  # matplotlib's first three


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, verdict_text):
    """A real training run: 3 epochs of 5 steps, evaluated every 3 steps and at the last, a sample after each epoch."""
    folder = tmp_path_factory.mktemp("report")
    (folder / "text.txt").write_text(verdict_text[:3000], encoding="utf-8")
    out = folder / "run"
    assert main(["train", "--data", str(folder / "text.txt"), "--out", str(out), "--preset", "tiny",
                 "--context-length", "16", "--batch-size", "8", "--epochs", "3", "--eval-freq", "3",
                 "--eval-iter", "1", "--sample-tokens", "5", "--warmup-steps", "4", "--cosine",
                 "--device", "cpu"]) == 0
    shutil.copy(out / "report.html", folder / "report_written_by_train.html")  # the tests below rewrite it
    return out


def test_the_figures_train_draws_while_final_is_written_show_the_whole_run(run_dir, tmp_path):
    drawn_early = embedded_pngs((run_dir.parent / "report_written_by_train.html").read_text(encoding="utf-8"))
    drawn_after = embedded_pngs(write_report(run_dir, tmp_path / "report.html").read_text(encoding="utf-8"))
    assert len(drawn_early) == len(drawn_after) >= 8
    for early, after in zip(drawn_early, drawn_after):
        np.testing.assert_array_equal(early, after)


def copy_run(run_dir, target, loss_offset: float = 0.0):
    """A copy of the run, its losses shifted by ``loss_offset`` so that its curves stand apart."""
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("report.html"))
    shifted = []
    for record in records(target):
        for key in ("loss", "train_loss", "val_loss"):
            if key in record:
                record[key] += loss_offset
        shifted.append(json.dumps(record) + "\n")
    (target / "metrics.jsonl").write_text("".join(shifted))
    return target


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def embedded_pngs(page: str) -> list[np.ndarray]:
    from matplotlib.image import imread

    return [imread(io.BytesIO(base64.b64decode(data)), format="png")
            for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def colour_pixels(image: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 40) -> int:
    pixels = image[..., :3].astype(float) * (255 if image.dtype != np.uint8 and image.max() <= 1 else 1)
    return int((np.abs(pixels - np.array(rgb)).max(axis=-1) < tolerance).sum())


def test_the_report_of_a_run_shows_its_curves_samples_metrics_and_config(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    page = path.read_text(encoding="utf-8")
    logged = records(run_dir)
    evals = [r for r in logged if r["event"] == "eval"]
    samples = [r for r in logged if r["event"] == "sample"]
    assert [r["step"] for r in evals] == [0, 3, 6, 9, 12, 14] and len(samples) == 3  # and the last step

    for heading in ("Final metrics", "Loss", "Train-val gap, learning rate, throughput", "Samples", "Config"):
        assert f"<h2>{heading}</h2>" in page
    for sample in samples:  # every sample, with its step and epoch
        assert re.search(rf'<td class="num">{sample["step"]}</td><td class="num">{sample["epoch"]}</td>'
                         rf'<td class="sample">{re.escape(sample_html(sample["text"]))}</td>', page)
    best = min(evals, key=lambda r: r["val_loss"])
    summary = summarize(read_run(run_dir))
    assert summary["best_val_loss"] == best["val_loss"] and summary["best_step"] == best["step"]
    assert summary["last_val_loss"] == evals[-1]["val_loss"] and summary["status"] == "finished"
    assert summary["steps"] == 15 and summary["epochs"] == 3 and summary["tokens_seen"] == 15 * 8 * 16
    end = [r for r in logged if r["event"] == "end"]
    assert len(end) == 1 and summary["wall_time_s"] == end[0]["wall_time_s"] >= evals[-1]["elapsed_s"]
    config = json.loads((run_dir / "config.json").read_text())
    assert summary["parameters"] == count_parameters(GPTModel(GPTConfig.from_dict(config["model"])))
    assert f"{best['val_loss']:.4g}" in page and f"{summary['tokens_seen']:,}" in page
    for section in ("model", "train"):
        for key, value in config[section].items():
            assert re.search(rf"<th>{key}</th><td>{re.escape(html.escape(json.dumps(value)))}</td>", page), key

    # Self-contained: no script, no stylesheet link, nothing fetched; eight plots embedded, none blank.
    assert "<script" not in page and "<link" not in page and not re.search(r"https?://", page)
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page))
    images = embedded_pngs(page)
    assert len(images) == 8
    for image in images:
        assert colour_pixels(image, RUN_COLOURS["blue"]) > 200
    loss_images = images[:4]  # linear and log, against steps and tokens: train in blue, val in orange
    assert all(colour_pixels(image, RUN_COLOURS["orange"]) > 200 for image in loss_images)


def test_the_wall_time_reads_as_the_command_line_writes_it(run_dir, tmp_path):
    """One way to write a duration (core.formatting): 5000 s is "83.3 min" in the report as in the CLI's lines."""
    run = copy_run(run_dir, tmp_path / "long")
    logged = records(run)
    for record in logged:
        if record["event"] == "end":
            record["wall_time_s"] = 5000.0
    (run / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in logged))
    assert '<tr><th>wall time</th><td class="num">83.3 min</td></tr>' in write_report(run).read_text()


def test_unknown_records_missing_keys_and_a_torn_last_line_are_tolerated(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        for record in ({"event": "warning", "step": 9, "text": "overfitting: train loss falling, val loss rising"},
                       {"event": "early_stop", "step": 12, "best_step": 9, "best_val_loss": 9.87},
                       {"event": "lr_drop", "step": 13, "factor": 0.5},
                       {"event": "eval", "step": 14},  # no losses: not plotted, not counted
                       {"step": 14, "text": "a record with no kind"}):
            f.write(json.dumps(record) + "\n")
        f.write('{"event": "train", "step": 15, "lo')
    page = write_report(run).read_text(encoding="utf-8")
    for text in ("<b>warning</b> step 9: overfitting: train loss falling, val loss rising",
                 "<b>early_stop</b> step 12: best_step=9, best_val_loss=9.87", "<b>lr_drop</b> step 13: factor=0.5",
                 "<b>record without an event</b> step 14: a record with no kind",
                 f"metrics.jsonl line {len(records(run_dir)) + 6} is not a JSON record: skipped"):
        assert text in page
    summary = summarize(read_run(run))
    assert summary["status"] == "stopped early at step 12"
    assert summary["best_val_loss"] == min(r["val_loss"] for r in records(run_dir) if r["event"] == "eval")


def test_a_run_without_records_or_config_still_gets_a_page(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert "config.json is missing" in page and "No samples." in page
    assert all(colour_pixels(image, RUN_COLOURS["blue"]) == 0 for image in embedded_pngs(page))


def test_several_runs_are_overlaid(run_dir, tmp_path, capsys):
    a = copy_run(run_dir, tmp_path / "a" / "run")
    b = copy_run(run_dir, tmp_path / "b" / "run", 0.3)  # same name: runs are then told apart by their paths
    c = copy_run(run_dir, tmp_path / "longer-lr", 0.6)
    config = json.loads((c / "config.json").read_text())
    config["train"]["lr"] = 0.001
    (c / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["report", str(a), str(b), str(c), "--out", str(tmp_path / "all.html")]) == 0
    assert capsys.readouterr().out.strip() == f"Wrote {tmp_path / 'all.html'}"
    page = (tmp_path / "all.html").read_text(encoding="utf-8")
    assert "<th>a/run</th><th>b/run</th><th>longer-lr</th>" in page
    assert '<tr class="differs"><th>lr</th>' in page and '<tr class="differs"><th>seed</th>' not in page
    loss_by_step = embedded_pngs(page)[0]
    assert all(colour_pixels(loss_by_step, rgb) > 200 for rgb in RUN_COLOURS.values())  # one colour per run
    single = embedded_pngs(write_report(a).read_text(encoding="utf-8"))[0]
    assert colour_pixels(single, RUN_COLOURS["green"]) == 0


def test_the_report_is_replaced_atomically(run_dir, tmp_path, monkeypatch):
    run = copy_run(run_dir, tmp_path / "run")
    (run / "report.html").write_text("the previous report")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files_module.os, "replace", full_disk)
    with pytest.raises(report_module.GptrainError, match="cannot write .*report.html: No space left on device"):
        write_report(run)
    assert (run / "report.html").read_text() == "the previous report"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    monkeypatch.undo()
    write_report(run)
    assert (run / "report.html").read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("make,message", [
    (lambda tmp: tmp, "holds no metrics.jsonl: give a run directory written by gptrain train"),
    (lambda tmp: tmp / "missing", "is not a directory"),
    (lambda tmp: (tmp / "file.txt").write_text("x") and tmp / "file.txt", "is not a directory"),
])
def test_bad_run_directory_is_one_line_and_exit_2(tmp_path, capsys, make, message):
    capsys.readouterr()
    assert main(["report", str(make(tmp_path))]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


# --- In a real browser ---

def chromium(page_url: str, profile, screenshot, height: int = 2000) -> str:
    """Load a page in headless Chromium and save a screenshot; returns Chromium's log (stderr)."""
    result = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", f"--screenshot={screenshot}", f"--window-size=1200,{height}",
         page_url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and screenshot.is_file(), result.stderr[-2000:]
    return result.stderr


def console_messages(log: str) -> list[str]:
    return [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_the_report_renders_in_headless_chromium(run_dir, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    from matplotlib.image import imread

    # The console check sees a broken page.
    (tmp_path / "broken.html").write_text("<!DOCTYPE html><p>x</p><script>throw new Error('boom')</script>")
    log = chromium((tmp_path / "broken.html").as_uri(), tmp_path / "profile", tmp_path / "broken.png", 300)
    assert any("Uncaught Error: boom" in line for line in console_messages(log))

    page = write_report(run_dir)
    log = chromium(page.as_uri(), tmp_path / "profile", tmp_path / "report.png")
    assert console_messages(log) == []
    shot = imread(tmp_path / "report.png")
    assert shot.shape[:2] == (2000, 1200)
    for colour in ("blue", "orange"):  # the plot lines are on screen
        assert colour_pixels(shot, RUN_COLOURS[colour]) > 1000, colour

    # Without the images the same page has no plot colours: the count above measures the plots.
    text = page.read_text(encoding="utf-8")
    (tmp_path / "no-plots.html").write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', text))
    chromium((tmp_path / "no-plots.html").as_uri(), tmp_path / "profile", tmp_path / "no-plots.png")
    assert colour_pixels(imread(tmp_path / "no-plots.png"), RUN_COLOURS["orange"]) < 50

    # The log-scale switch works without a script: checking it shows other loss plots.
    (tmp_path / "log.html").write_text(text.replace('id="scale-linear" checked', 'id="scale-linear"')
                                       .replace('id="scale-log">', 'id="scale-log" checked>'))
    chromium((tmp_path / "log.html").as_uri(), tmp_path / "profile", tmp_path / "log.png")
    changed = np.abs(imread(tmp_path / "log.png")[..., :3] - shot[..., :3]).max(axis=-1) > 0.1
    assert changed.sum() > 5000
