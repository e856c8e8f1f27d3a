"""The hyper-parameter grid that ``--param-i`` indexes (one SLURM array task per point).

The default grid is batch {64,128,256} x epochs {50,100,300} x temperature {0.1,0.5,0.8}
(27 points, batch varies slowest). A user grid comes from:

* ``--grid grid.csv``: one row per point, columns ``batch_size``, ``epochs``, ``temperature`` (any
  subset); a column the file lacks takes its value from ``--batch-size``/``--epochs``/
  ``--temperature``, or its list flag (product), or the single default (256, 300, 0.5);
* value lists ``--batch-sizes 32,64 --epoch-list 50,100 --temperatures 0.1,0.5`` (their product);
  an axis given neither a list nor a single value keeps the default grid's values;
* a single value (``--batch-size 64``) fixes that axis: the grid is the other axes.

A point whose batch is larger than the training set is clamped to the largest power of two that
the data holds (:func:`clamp_to_data`); when another point already trains the clamped values the
point is skipped.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

from ..cli import UserError
from ..flags import defaults
from .settings import BATCH_SIZES, EPOCHS, TEMPERATURES, TrainSettings

GRID = list(itertools.product(BATCH_SIZES, EPOCHS, TEMPERATURES))  # param-i = position + 1

AXES = ("batch_size", "epochs", "temperature")
DEFAULTS = {axis: defaults(TrainSettings)[axis] for axis in AXES}  # the flags' (256, 300, 0.5)
DEFAULT_AXES = {"batch_size": BATCH_SIZES, "epochs": EPOCHS, "temperature": TEMPERATURES}
TYPES = {"batch_size": int, "epochs": int, "temperature": float}
LIST_FLAGS = {"batch_size": "batch_sizes", "epochs": "epoch_list", "temperature": "temperatures"}
GRID_FLAGS = ("grid", *LIST_FLAGS.values())  # where a grid was listed; they do not define a run
# Sensible ranges, for flags and grid files alike (README "Training"): NT-Xent below 0.01 or above
# 10 is numerically degenerate (exp overflows / the loss is constant ln(2B-1)).
RANGES = {"batch_size": (2, 65536), "epochs": (1, 100000), "temperature": (0.01, 10.0)}

Point = tuple[int, int, float]


def out_of_range(batch_size, epochs, temperature) -> str:
    """What is wrong with a point's values ('' when each lies in :data:`RANGES`, finite)."""
    import math

    for axis, value in zip(AXES, (batch_size, epochs, temperature)):
        low, high = RANGES[axis]
        if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
            return f"{axis.replace('_', ' ')} must be between {low:g} and {high:g} (got {value:g})"
    return ""


def flag(axis: str, listed: bool = False) -> str:
    return "--" + (LIST_FLAGS[axis] if listed else axis).replace("_", "-")


def read_grid_csv(path: Path) -> tuple[list[str], list[dict]]:
    """Columns and rows of a grid file; every problem is a one-line error naming the file."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            raw = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    except OSError as e:
        raise UserError(f"--grid {path}: cannot read it ({e.strerror or e}); give a CSV file with "
                        "columns batch_size, epochs, temperature") from None
    unknown = [c for c in columns if c not in AXES]
    if unknown or not columns:
        raise UserError(f"--grid {path}: unknown column(s) {', '.join(unknown) or '(none)'}; use "
                        f"{', '.join(AXES)} (any subset, one row per grid point)")
    rows = []
    for line, r in enumerate(raw, 2):
        if not any(r.values()):
            continue
        try:
            rows.append({c: TYPES[c](r[c]) for c in columns})
        except (TypeError, ValueError):
            raise UserError(f"--grid {path} line {line}: {r} is not numbers in every column; fix "
                            "that row") from None
    if not rows:
        raise UserError(f"--grid {path} has no rows; add one row per grid point")
    return columns, rows


def build_grid(*, grid_file: Path | None = None, fixed: dict[str, float] | None = None,
               lists: dict[str, tuple | None] | None = None) -> list[Point]:
    """The grid in use: the default 27 points, or the one the grid flags describe (see module doc).

    Args:
        grid_file: ``--grid`` (a CSV, one row per point).
        fixed: axis -> the single value typed on the command line (``--batch-size 64``).
        lists: axis -> the values of its list flag (``--batch-sizes 32,64``), or None.

    Raises:
        UserError: an axis given twice (single value and list, or flag and CSV column), duplicate
            points, or values out of range.
    """
    fixed, lists = fixed or {}, lists or {}
    columns, rows = read_grid_csv(grid_file) if grid_file else ([], [{}])
    axes = {}
    for axis in AXES:
        one, many = fixed.get(axis), lists.get(axis)
        if one is not None and many:
            raise UserError(f"{flag(axis)} fixes the axis that {flag(axis, True)} lists; drop one")
        if axis in columns and (one is not None or many):
            raise UserError(f"--grid {grid_file} has a {axis} column; drop "
                            f"{flag(axis) if one is not None else flag(axis, True)}")
        if axis not in columns:
            fallback = (DEFAULTS[axis],) if columns else DEFAULT_AXES[axis]
            axes[axis] = (one,) if one is not None else tuple(many) if many else fallback
    points = []
    for row in rows:
        for combo in itertools.product(*(axes.get(a, (None,)) for a in AXES)):
            points.append(tuple(row.get(a, v) for a, v in zip(AXES, combo)))
    for i, (b, e, t) in enumerate(points, 1):
        wrong = out_of_range(b, e, t)
        if wrong:
            source = f"--grid {grid_file} " if grid_file else ""
            raise UserError(f"{source}grid point {i} ({b}, {e}, {t:g}): {wrong}; fix the "
                            f"{'row' if grid_file else 'list'}")
        if points.index((b, e, t)) != i - 1:
            raise UserError(f"grid points {points.index((b, e, t)) + 1} and {i} are the same "
                            f"({run_name(b, e, t)}); list each point once")
    return points


def grid_points(s: TrainSettings) -> list[Point]:
    """The grid in use (:func:`build_grid`): ``--grid``, the list flags, and the single values typed
    on the command line, which fix their axis."""
    return build_grid(grid_file=s.grid, fixed={a: getattr(s, a) for a in AXES if a in s.given},
                      lists={a: getattr(s, LIST_FLAGS[a]) for a in AXES})


def grid_point(param_i: int, grid: list[Point] | None = None) -> Point:
    """``--param-i`` (1..N) -> ``(batch_size, epochs, temperature)`` of ``grid`` (default 27)."""
    grid = GRID if grid is None else grid
    if not 1 <= param_i <= len(grid):
        raise UserError(f"--param-i must be between 1 and {len(grid)} (got {param_i}); "
                        "see --list-grid")
    return grid[param_i - 1]


def run_name(batch_size: int, epochs: int, temperature: float) -> str:
    """``simclr_bs_<b>_nepochs_<e>_temp_<t>``, e.g. ``simclr_bs_256_nepochs_300_temp_0.5``."""
    return f"simclr_bs_{batch_size}_nepochs_{epochs}_temp_{temperature:g}"


def largest_batch(n_images: int) -> int:
    """The largest power of two <= ``n_images`` (it splits evenly over 1, 2, 4, 8 ... GPUs)."""
    return 1 << (n_images.bit_length() - 1) if n_images > 0 else 0


def clamp_to_data(grid: list[Point], param_i: int, n_images: int) -> tuple[Point, int | None]:
    """Fit grid point ``param_i`` to a training set of ``n_images`` images.

    A batch larger than the data becomes :func:`largest_batch` (never below 2). When several points
    end up with the same values, one trains them: the point that asked for them unclamped, else the
    lowest-numbered one; the others are skipped.

    Returns:
        ``(values to train, None)``, or ``(values, number of the point that trains them)`` when
        this point is to be skipped.
    """
    def used(p: Point) -> Point:
        fits = p[0] <= n_images or largest_batch(n_images) < 2
        return p if fits else (largest_batch(n_images), p[1], p[2])

    point = used(grid[param_i - 1])
    same = [j for j, p in enumerate(grid, 1) if used(p) == point]
    owner = min(same, key=lambda j: (used(grid[j - 1]) != grid[j - 1], j))
    return point, None if owner == param_i else owner


def grid_table(grid: list[Point] | None = None) -> str:
    """The grid with its point numbers, and the ``--array`` to submit it with."""
    grid = GRID if grid is None else grid
    rows = [f"{'param-i':>7}  {'batch':>5}  {'epochs':>6}  {'temp':>4}  run"]
    for i, (b, e, t) in enumerate(grid, 1):
        rows.append(f"{i:>7}  {b:>5}  {e:>6}  {t:>4g}  {run_name(b, e, t)}")
    rows.append(f"{len(grid)} points: sbatch --array=1-{len(grid)} 3-training/grid.sbatch "
                "(plus the same grid flags)")
    return "\n".join(rows)


def fit_point_to_data(grid: list[Point], param_i: int, n_images: int, root) -> int | None:
    """The batch size grid point ``param_i`` trains on ``n_images`` images (one-line note when it
    is clamped), or None when another grid point trains the clamped values (a ``skip:`` line
    says which). The run name follows the batch size used.
    """
    asked = grid[param_i - 1][0]
    (used, _, _), owner = clamp_to_data(grid, param_i, n_images)
    if used == asked:
        return used
    how = f"batch {asked} > the {n_images} training images in {root}"
    if owner is not None:
        print(f"skip: grid point {param_i} ({how}) would train batch {used}, which "
              f"grid point {owner} ({run_name(*clamp_to_data(grid, owner, n_images)[0])}) covers")
        return None
    print(f"note: grid point {param_i}: {how}; using batch {used} (the largest "
          "power of two the data holds)")
    return used
