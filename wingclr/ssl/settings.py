"""Stage 3's settings: read once from the command line, then passed (frozen) to the training
modules instead of the argparse Namespace. The defaults live in ``3-training/train.py`` (the grid's
in :data:`wingclr.ssl.grid.DEFAULTS`, the recipe's in :data:`wingclr.ssl.recipes.RECIPES`).

:func:`resolve` turns the flags as typed into the run's values: the grid point of ``--param-i``
and the recipe's values for the recipe flags left unset.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..cli import Settings, UserError
from .grid import AXES, GRID_FLAGS, LIST_FLAGS, Point, build_grid, grid_point, out_of_range
from .recipes import recipe_values


@dataclass(frozen=True, kw_only=True)
class TrainSettings(Settings):
    """Every stage 3 flag, in ``3-training/train.py``'s order (see its ``--help``).

    The recipe flags (``min_scale`` .. ``bn``) are None until :func:`resolve` fills them.
    """

    data: Path
    output: Path
    run_name: str | None
    param_i: int | None
    list_grid: bool
    grid: Path | None
    batch_sizes: tuple[int, ...] | None
    epoch_list: tuple[int, ...] | None
    temperatures: tuple[float, ...] | None
    batch_size: int
    epochs: int
    temperature: float
    backbone: str
    pretrained: str
    input_size: int
    channels_last: str
    compile: bool
    recipe: str
    min_scale: float | None
    cj_prob: float | None
    gray_prob: float | None
    blur_prob: float | None
    vf_prob: float | None
    rr_prob: float | None
    optimizer: str | None
    lr: float | None
    lr_scaling: str | None
    weight_decay: float | None
    warmup_epochs: int | None
    balance: str | None
    backbone_lr_scale: float | None
    bn: str | None
    forward: str | None
    interpolate: float | None
    monitor_every: int | None
    labels: Path | None
    label_column: str
    id_column: str | None
    select: str
    augment_on: str
    cache_size: int | None
    cache_dir: Path
    bands: tuple[int, ...] | None
    rgb_bands: str | None
    views: str | None
    band_group: tuple[str, ...]
    scale16: str
    background: tuple[int, int, int]
    num_workers: int | None
    accelerator: str
    devices: str
    num_nodes: int
    precision: str
    sync_batchnorm: bool
    seed: int
    quiet: bool
    overwrite: bool
    keep_last: bool
    save_every_min: float
    cache_only: bool

    def grid_points(self) -> list[Point]:
        """The grid in use (:func:`~wingclr.ssl.grid.build_grid`): ``--grid``, the list flags, and
        the single values typed on the command line, which fix their axis."""
        return build_grid(grid_file=self.grid,
                          fixed={a: getattr(self, a) for a in AXES if a in self.given},
                          lists={a: getattr(self, LIST_FLAGS[a]) for a in AXES})


def resolve(s: TrainSettings) -> tuple[TrainSettings, list[Point] | None]:
    """The run's values: ``--param-i``'s grid point, then the recipe's values for the recipe flags
    left unset (checked for range).

    Returns:
        ``(settings, grid)``; the grid when ``--param-i`` chose the batch size, which may then be
        clamped to the data (:func:`~wingclr.ssl.grid.fit_point_to_data`), else None.

    Raises:
        UserError: a grid flag without ``--param-i``, a bad grid, values out of range.
    """
    grid = None
    if s.param_i is not None:
        grid = s.grid_points()
        s = replace(s, **dict(zip(AXES, grid_point(s.param_i, grid))))
        grid = None if "batch_size" in s.given else grid  # a typed --batch-size is never clamped
    elif listed := [f for f in GRID_FLAGS if getattr(s, f)]:
        raise UserError(f"--{listed[0].replace('_', '-')} lists a grid: pick one point with "
                        "--param-i i (see --list-grid)")
    wrong = out_of_range(s.batch_size, s.epochs, s.temperature)
    if wrong:
        raise UserError(f"--{wrong.split(' must')[0].replace(' ', '-')}: {wrong}")
    return replace(s, **recipe_values(s)), grid
