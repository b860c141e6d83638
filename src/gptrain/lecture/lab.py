"""The lecture's sampling exercises, as the computations and tables behind ``gptrain lab``.

- temperature: softmax(logits / T) for several temperatures;
- multinomial: draws from a distribution, observed against expected frequencies;
- loss: cross-entropy -ln P(target) per row and its batch average;
- sweep: one prompt continued under a grid of temperature and top-k settings.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from gptrain.core.errors import GptrainError
from gptrain.core.runtime import resolve_device
from gptrain.data.tokenizer import encode_text, get_tokenizer
from gptrain.inference.generate import check_sampling_args, generate
from gptrain.interop.sources import resolve_model
from gptrain.model.gpt import unwrap_model

LECTURE_LOGITS = (2.1, 1.3, 0.8)
LECTURE_TEMPERATURES = (0.5, 1.0, 2.0)
WEATHER_PROBS = (0.5, 0.3, 0.2)
WEATHER_NAMES = ("sunny", "rainy", "cloudy")
# "The cat sat on the ___": the exercise P(mat) = 0.6, and its discussion question, P(mat) = 0.1.
MAT_PROBS = ((0.6, 0.2, 0.1, 0.1), (0.1, 0.6, 0.2, 0.1))
MAT_NAMES = ("mat", "floor", "chair", "table")
SWEEP_PROMPT = "In the year 2030,"
SWEEP_GRID = ((0.5, 10), (1.0, 25), (1.8, 50), (2.5, 5))


def _finite(values: Sequence[float], what: str) -> torch.Tensor:
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if tensor.numel() == 0:
        raise GptrainError(f"{what}: give at least one value")
    if not torch.isfinite(tensor).all():
        raise GptrainError(f"{what} must be finite numbers, not {list(values)}")
    return tensor


def _names(names: Sequence[str] | None, count: int, what: str) -> list[str]:
    if names is None:
        return [f"token {i}" for i in range(count)]
    if len(names) != count:
        raise GptrainError(f"{len(names)} names for {count} {what}: give one name per value")
    return list(names)


def _distribution(probs: Sequence[float], what: str) -> torch.Tensor:
    tensor = _finite(probs, what)
    if (tensor < 0).any() or (tensor > 1).any():
        raise GptrainError(f"{what} must lie between 0 and 1, not {list(probs)}")
    if abs(tensor.sum().item() - 1.0) > 1e-3:
        raise GptrainError(f"{what} {list(probs)} sum to {tensor.sum().item():.4g}, not 1: give a distribution "
                           "(or logits, which are normalised by the softmax)")
    return tensor


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: Sequence[int] = (0,)) -> str:
    """Columns of numbers right-aligned, ``text_columns`` left-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(cell.ljust(width) if i in text_columns else cell.rjust(width)
                               for i, (cell, width) in enumerate(zip(line, widths))).rstrip()
                     for line in [header, *rows])


# --- temperature -------------------------------------------------------------------------

def softmax_at_temperatures(logits: Sequence[float], temperatures: Sequence[float]) -> torch.Tensor:
    """softmax(logits / T) for each temperature T, one row per temperature (T = 0: all mass on the argmax)."""
    logits_t = _finite(logits, "logits")
    temps = _finite(temperatures, "temperatures")
    if (temps < 0).any():
        raise GptrainError(f"temperatures must be >= 0, not {list(temperatures)}")
    rows = []
    for temperature in temps.tolist():
        if temperature == 0:
            rows.append(torch.nn.functional.one_hot(logits_t.argmax(), logits_t.numel()).double())
        else:
            rows.append(torch.softmax(logits_t / temperature, dim=-1))
    return torch.stack(rows)


def temperature_table(logits: Sequence[float] = LECTURE_LOGITS,
                      temperatures: Sequence[float] = LECTURE_TEMPERATURES,
                      names: Sequence[str] | None = None) -> str:
    probs = softmax_at_temperatures(logits, temperatures)
    names = _names(names, len(logits), "logits")
    rows = [[f"T={t:g}", *(f"{p:.4f}" for p in row.tolist())] for t, row in zip(temperatures, probs)]
    logit_row = ["logit", *(f"{v:g}" for v in logits)]
    return ("softmax(logits / T): T < 1 sharpens the distribution, T > 1 flattens it\n"
            + _table(["", *names], [logit_row, *rows]))


# --- multinomial -------------------------------------------------------------------------

def multinomial_counts(probs: Sequence[float], samples: int, seed: int) -> torch.Tensor:
    """How often each outcome comes up in ``samples`` draws (with replacement) seeded by ``seed``."""
    distribution = _distribution(probs, "probabilities")
    if samples < 1:
        raise GptrainError(f"the number of samples must be at least 1, not {samples}")
    generator = torch.Generator().manual_seed(seed)
    draws = torch.multinomial(distribution, samples, replacement=True, generator=generator)
    return torch.bincount(draws, minlength=distribution.numel())


def multinomial_table(probs: Sequence[float] = WEATHER_PROBS, names: Sequence[str] | None = WEATHER_NAMES,
                      samples: int = 1000, seed: int = 123) -> str:
    counts = multinomial_counts(probs, samples, seed)
    names = _names(names, len(probs), "probabilities")
    rows = []
    for name, p, count in zip(names, probs, counts.tolist()):
        spread = math.sqrt(p * (1 - p) / samples)  # one standard deviation of the observed frequency
        rows.append([name, f"{p:.3f}", str(count), f"{count / samples:.3f}", f"±{spread:.3f}"])
    return (f"{samples} draws with torch.multinomial (seed {seed})\n"
            + _table(["outcome", "expected", "count", "observed", "1 s.d."], rows))


# --- loss --------------------------------------------------------------------------------

def cross_entropy_rows(rows: Sequence[Sequence[float]], targets: Sequence[int],
                       from_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(P(target) per row, -ln P(target) per row); ``rows`` are probabilities, or logits."""
    if not rows:
        raise GptrainError("give at least one row of probabilities or logits")
    width = len(rows[0])
    if any(len(row) != width for row in rows):
        raise GptrainError(f"every row needs the same number of values, not {[len(r) for r in rows]}")
    if len(targets) == 1:
        targets = list(targets) * len(rows)
    if len(targets) != len(rows):
        raise GptrainError(f"{len(targets)} targets for {len(rows)} rows: give one target per row, or one for all")
    if any(not 0 <= t < width for t in targets):
        raise GptrainError(f"targets must be indices from 0 to {width - 1}, not {list(targets)}")
    if from_logits:
        log_probs = torch.log_softmax(torch.stack([_finite(r, "logits") for r in rows]), dim=-1)
    else:
        log_probs = torch.stack([_distribution(r, f"probabilities of row {i + 1}") for i, r in enumerate(rows)]).log()
    target_log_probs = log_probs[torch.arange(len(rows)), torch.tensor(targets)]
    return target_log_probs.exp(), -target_log_probs


def loss_table(rows: Sequence[Sequence[float]] = MAT_PROBS, targets: Sequence[int | str] = ("mat",),
               names: Sequence[str] | None = MAT_NAMES, from_logits: bool = False) -> str:
    names = _names(names, len(rows[0]) if rows else 0, "values per row")
    indices = []
    for target in targets:
        if isinstance(target, str) and target in names:
            indices.append(names.index(target))
        elif isinstance(target, int) or str(target).isdigit():
            indices.append(int(target))
        else:
            raise GptrainError(f"target {target!r} is neither an index nor one of the names {', '.join(names)}")
    target_probs, losses = cross_entropy_rows(rows, indices, from_logits)
    if len(indices) == 1:
        indices = indices * len(rows)
    table = _table(["row", "target", "P(target)", "loss = -ln P(target)"],
                   [[str(i + 1), names[t], f"{p:.4f}", f"{loss:.4f}"]
                    for i, (t, p, loss) in enumerate(zip(indices, target_probs.tolist(), losses.tolist()))],
                   text_columns=(1,))
    return f"{table}\nbatch average: {losses.mean().item():.4f} (what training minimises)"


# --- sweep -------------------------------------------------------------------------------

def parse_grid(cells: Sequence[str]) -> list[tuple[float, int | None]]:
    """``["0.5/10", "1.8/none"]`` -> ``[(0.5, 10), (1.8, None)]``."""
    grid = []
    for cell in cells:
        temperature, _, top_k = cell.partition("/")
        try:
            pair = (float(temperature), None if top_k.lower() in {"none", ""} else int(top_k))
        except ValueError:
            raise GptrainError(f"grid cell {cell!r} is not TEMPERATURE/TOP_K (e.g. 1.0/25, or 1.0/none)") from None
        check_sampling_args(0, pair[0], pair[1])
        grid.append(pair)
    return grid


def sweep(model: nn.Module, tokenizer, prompt: str = SWEEP_PROMPT,
          grid: Sequence[tuple[float, int | None]] = SWEEP_GRID, max_new_tokens: int = 30,
          seed: int = 123) -> list[tuple[float, int | None, str]]:
    """The continuation of ``prompt`` under each (temperature, top_k) of ``grid``, each cell seeded with ``seed``."""
    device = next(unwrap_model(model).parameters()).device
    idx = torch.tensor([encode_text(tokenizer, prompt)], device=device)
    if idx.shape[1] == 0:
        raise GptrainError("the prompt is empty: give --prompt some text")
    context = unwrap_model(model).cfg.context_length
    cells = []
    for temperature, top_k in grid:
        generator = torch.Generator(device=device).manual_seed(seed)
        out = generate(model, idx[:, -context:], max_new_tokens, context, temperature=temperature, top_k=top_k,
                       generator=generator)
        cells.append((temperature, top_k, tokenizer.decode(out[0, min(idx.shape[1], context):].tolist())))
    return cells


def sweep_table(cells: Sequence[tuple[float, int | None, str]], prompt: str) -> str:
    rows = [[f"{t:g}", "none" if k is None else str(k), " ".join(text.split())] for t, k, text in cells]
    return f"prompt: {prompt}\n" + _table(["temperature", "top_k", "continuation"], rows, text_columns=(2,))


def sweep_source(prompt: str, cells: Sequence[str], *, model: str, n_heads: int | None = None,
                 max_new_tokens: int = 30, seed: int = 123, device: str = "auto") -> str:
    """``gptrain lab sweep``'s table: :func:`sweep` over the TEMPERATURE/TOP_K ``cells`` (see
    :func:`parse_grid`) with the model that ``model`` names (see :func:`gptrain.interop.sources.resolve_model`)."""
    grid = parse_grid(cells)
    loaded = resolve_model(model, device=resolve_device(device), n_heads=n_heads).model
    return sweep_table(sweep(loaded, get_tokenizer(), prompt, grid, max_new_tokens, seed), prompt)
