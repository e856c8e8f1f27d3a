"""The run's values from stage 3's flags: the ``--param-i`` grid point, then ``--recipe``'s values
for the recipe flags left unset. The recipes themselves (``RECIPES``) and every other stage 3
default are declared with the flags in :mod:`wingclr.train.settings`.
"""

from __future__ import annotations

from dataclasses import replace

from ..cli import UserError
from .grid import AXES, GRID_FLAGS, Point, grid_point, grid_points, out_of_range
from .settings import BASE_LR, DEFAULT_RECIPE, RECIPES, WEIGHT_DECAY, TrainSettings  # noqa: F401

PROBABILITIES = ("cj_prob", "gray_prob", "blur_prob", "vf_prob", "rr_prob")


def recipe_values(s: TrainSettings) -> dict:
    """The recipe flags' values for stage 3's settings ``s``: those given, else ``--recipe``'s (lr
    and weight decay: the optimizer's defaults when the recipe leaves them to it).

    Returns:
        flag -> value for every flag of the recipe (what the run records).

    Raises:
        UserError: a value out of range.
    """
    v = {key: value if (value := getattr(s, key)) is not None else default
         for key, default in RECIPES[s.recipe].items()}
    if v["lr"] is None:
        v["lr"] = BASE_LR[v["optimizer"]]
    if v["weight_decay"] is None:
        v["weight_decay"] = WEIGHT_DECAY[v["optimizer"]]
    for key in PROBABILITIES:
        if not 0 <= v[key] <= 1:
            raise UserError(f"--{key.replace('_', '-')} must be in [0, 1], got {v[key]}")
    if not 0 <= v["interpolate"] <= 1:
        raise UserError(f"--interpolate must be in [0, 1], got {v['interpolate']}")
    if not 0 <= v["backbone_lr_scale"] <= 10:
        raise UserError(f"--backbone-lr-scale must be in [0, 10], got {v['backbone_lr_scale']}")
    if not 0 < v["min_scale"] <= 1:
        raise UserError(f"--min-scale must be in (0, 1], got {v['min_scale']}")
    if not v["lr"] > 0 or not v["weight_decay"] >= 0 or v["warmup_epochs"] < 0:
        raise UserError(f"--lr must be > 0, --weight-decay >= 0 and --warmup-epochs >= 0 (got "
                        f"{v['lr']}, {v['weight_decay']}, {v['warmup_epochs']})")
    return v


def resolve(s: TrainSettings) -> tuple[TrainSettings, list[Point] | None]:
    """The run's values: ``--param-i``'s grid point, then the recipe's values for the recipe flags
    left unset (checked for range).

    Returns:
        ``(settings, grid)``; the grid when ``--param-i`` chose the batch size, which may then be
        clamped to the data (:func:`~wingclr.train.grid.fit_point_to_data`), else None.

    Raises:
        UserError: a grid flag without ``--param-i``, a bad grid, values out of range.
    """
    grid = None
    if s.param_i is not None:
        grid = grid_points(s)
        s = replace(s, **dict(zip(AXES, grid_point(s.param_i, grid))))
        grid = None if "batch_size" in s.given else grid  # a typed --batch-size is never clamped
    elif listed := [f for f in GRID_FLAGS if getattr(s, f)]:
        raise UserError(f"--{listed[0].replace('_', '-')} lists a grid: pick one point with "
                        "--param-i i (see --list-grid)")
    wrong = out_of_range(s.batch_size, s.epochs, s.temperature)
    if wrong:
        raise UserError(f"--{wrong.split(' must')[0].replace(' ', '-')}: {wrong}")
    return replace(s, **recipe_values(s)), grid
