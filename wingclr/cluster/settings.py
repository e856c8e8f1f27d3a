"""Stage 1's settings: read once from the command line, then passed (frozen) to every stage 1
module instead of the argparse Namespace. The defaults live in ``1-clustering/cluster.py`` only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..cli import Settings


@dataclass(frozen=True, kw_only=True)
class ClusterSettings(Settings):
    """Every stage 1 flag (see ``1-clustering/cluster.py --help`` for what each does).

    ``min_cluster_size`` and ``cluster_selection_epsilon`` are None when not given; the stage
    replaces them with the values it clustered with (batch defaults, or the interactive answers
    kept), which is what manifest.json records.
    """

    input: Path
    output: Path
    backbone: str
    pretrained: str
    allow_random_features: bool
    input_size: int
    batch_size: int
    num_workers: int | None
    device: str
    background: tuple[int, int, int]
    n_neighbors: int
    min_dist: float
    metric: str
    pca_dims: int
    seed: int
    min_cluster_size: int | None
    cluster_selection_epsilon: float | None
    min_samples: int | None
    yes: bool
    interactive: bool
    sweep: bool
    no_show: bool
    link: str
    quiet: bool
    overwrite: bool
