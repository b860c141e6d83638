"""What a run shows a person: the loss plot, and the log lines when no progress bar is drawn."""

import numpy as np
from matplotlib.image import imread

from gptrain import plot_losses

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
