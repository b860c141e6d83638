"""What a run shows a person: the loss plot, and the log lines when no progress bar is drawn."""

import re

import numpy as np
from matplotlib.image import imread

from gptrain import TrainConfig, plot_losses, train

TRAIN_BLUE, VAL_ORANGE = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)  # matplotlib's first two colours


def pixels_of(image: np.ndarray, rgb) -> np.ndarray:
    return (np.abs(image[..., :3] * 255 - np.array(rgb)) < 30).all(axis=-1)


def test_one_evaluation_is_drawn_as_points(tmp_path):
    """One evaluation: a line of one point is invisible, so both losses are markers in the middle of the
    axes (left of the legend, which also holds the colours)."""
    image = imread(plot_losses([0.4], [5120], [9.5], [9.7], tmp_path / "loss.png"))
    middle = image[:, int(0.40 * image.shape[1]):int(0.58 * image.shape[1])]
    assert pixels_of(middle, TRAIN_BLUE).sum() > 50 and pixels_of(middle, VAL_ORANGE).sum() > 50
    # Several evaluations stay the book's lines, without markers: thin lines, few pixels per column.
    image = imread(plot_losses([0.4, 0.6], [5120, 7680], [9.5, 9.5], [9.7, 9.7], tmp_path / "loss.png"))
    middle = image[:, int(0.40 * image.shape[1]):int(0.58 * image.shape[1])]
    assert pixels_of(middle, TRAIN_BLUE).sum(axis=0).max() <= 6


def test_without_a_progress_bar_each_evaluation_line_gives_speed_elapsed_and_eta(tmp_path, story_page):
    """pytest's output is no terminal, as under nohup, Slurm or CI: tqdm draws no bar."""
    cfg = TrainConfig(data=str(story_page), out=str(tmp_path / "run"), preset="tiny", context_length=32, batch_size=4,
                      max_steps=6, eval_freq=5, eval_iter=1, device="cpu", sample_tokens=0, precision="fp32")
    lines = []
    train(cfg, echo=lines.append)
    evals = [line for line in lines if line.startswith("Ep ")]
    assert [line.split(":")[0] for line in evals] == ["Ep 1 (Step 000000)", "Ep 1 (Step 000005)"]
    pattern = (r"Ep 1 \(Step \d{6}\): Train loss \d+\.\d{3}, Val loss \d+\.\d{3}"  # the book's line, then
               r" \| ([\d,]+) tokens/s, (\d+\.\d) s elapsed, ETA (\d+\.\d) s")
    figures = [re.fullmatch(pattern, line) for line in evals]
    assert all(figures), evals
    assert all(int(m[1].replace(",", "")) > 0 for m in figures)
    elapsed = [float(m[2]) for m in figures]
    assert elapsed == sorted(elapsed)
    assert float(figures[-1][3]) == 0.0  # the last step: nothing left
