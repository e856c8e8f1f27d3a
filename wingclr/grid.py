"""The 27-point hyper-parameter grid that ``--param-i`` indexes (one SLURM array task each)."""

from __future__ import annotations

import itertools

from .cli import UserError

BATCH_SIZES = (64, 128, 256)
EPOCHS = (50, 100, 300)
TEMPERATURES = (0.1, 0.5, 0.8)
GRID = list(itertools.product(BATCH_SIZES, EPOCHS, TEMPERATURES))  # param-i = position + 1


def grid_point(param_i: int) -> tuple[int, int, float]:
    """``--param-i`` (1..27) -> ``(batch_size, epochs, temperature)``; batch varies slowest."""
    if not 1 <= param_i <= len(GRID):
        raise UserError(f"--param-i must be between 1 and {len(GRID)} (got {param_i}); "
                        "see --list-grid")
    return GRID[param_i - 1]


def run_name(batch_size: int, epochs: int, temperature: float) -> str:
    """``simclr_bs_<b>_nepochs_<e>_temp_<t>``, e.g. ``simclr_bs_256_nepochs_300_temp_0.5``."""
    return f"simclr_bs_{batch_size}_nepochs_{epochs}_temp_{temperature:g}"


def grid_table() -> str:
    rows = [f"{'param-i':>7}  {'batch':>5}  {'epochs':>6}  {'temp':>4}  run"]
    for i, (b, e, t) in enumerate(GRID, 1):
        rows.append(f"{i:>7}  {b:>5}  {e:>6}  {t:>4g}  {run_name(b, e, t)}")
    return "\n".join(rows)
