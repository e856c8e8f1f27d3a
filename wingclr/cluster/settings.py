"""Stage 1's settings: every flag of ``1-clustering/cluster.py`` declared once (:mod:`wingclr.flags`):
its parser and ``outputs.RUN_ONLY["1-clustering"]`` are built from this class, which is then passed
(frozen) to every stage 1 module instead of the argparse Namespace."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..cli import BACKGROUND_HELP, NO_PRETRAINED, PRETRAINED_HELP, STAGE_DIRS, Settings, parse_rgb
from ..flags import flag, run_only
from ..models import BACKBONES, check_backbone
from ..outputs import RUN_ONLY


@dataclass(frozen=True, kw_only=True)
class ClusterSettings(Settings):
    """Every stage 1 flag; the field order is the manifest's "args" order and ``--help``'s.

    ``min_cluster_size`` and ``cluster_selection_epsilon`` are None when not given; the stage
    replaces them with the values it clustered with (batch defaults, or the interactive answers
    kept), which is what manifest.json records.
    """

    GROUPS = {None: "", "features": "features (cached in <output>/features.npy)", "umap": "UMAP (3-D)",
              "hdbscan": "HDBSCAN (asked interactively; these give the defaults)", "run": "how to run"}

    input: Path = flag(STAGE_DIRS["segmentation"] / "images",
                       "image folder (subfolders allowed); stage 0's output folder works too")
    output: Path = flag(STAGE_DIRS["clustering"], "output folder")
    backbone: str = flag("vgg16", f"ImageNet network whose features are clustered (vgg16: 4096-d fc7; "
                                  f"{', '.join(sorted(BACKBONES))} or timm/<model>, e.g. timm/efficientnet_lite0)",
                         group="features", type=check_backbone)
    pretrained: str = flag("imagenet", PRETRAINED_HELP, group="features", choices=["imagenet", "none"],
                           also=[NO_PRETRAINED])
    allow_random_features: bool = flag(False, "accept --pretrained none: random features cluster by colour "
                                              "and pose, not pattern (for testing the pipeline; the output "
                                              "is marked)", group="features", run_only=True)
    input_size: int = flag(224, "images are letterboxed to this side (px) before the network", group="features")
    batch_size: int = flag(32, "images per forward pass", group="features", run_only=True)
    num_workers: int | None = flag(None, "DataLoader workers that decode images (default min(8, CPUs))",
                                   group="features", run_only=True)
    device: str = flag("auto", "auto (GPU when present), cpu or cuda", group="features", run_only=True)
    background: tuple[int, int, int] = flag((255, 255, 255), BACKGROUND_HELP, group="features", type=parse_rgb)
    n_neighbors: int = flag(15, "UMAP neighbourhood size", group="umap")
    min_dist: float = flag(0.1, "UMAP minimum distance", group="umap")
    metric: str = flag("euclidean", "feature distance (euclidean, cosine, ...)", group="umap")
    pca_dims: int = flag(0, "reduce features to this many principal axes before UMAP (0: off)", group="umap")
    seed: int = flag(0, "random seed (UMAP; also the weights with --pretrained none)", group="umap")
    min_cluster_size: int | None = flag(None, "smallest group that counts as a cluster (batch default 20)",
                                        group="hdbscan")
    cluster_selection_epsilon: float | None = flag(None, "merge clusters closer than this in UMAP space "
                                                         "(batch default 0.0)", group="hdbscan")
    min_samples: int | None = flag(None, "HDBSCAN min_samples (default: min_cluster_size)", group="hdbscan")
    yes: bool = flag(False, "no questions: cluster once with the given (or default) parameters and keep",
                     group="run", run_only=True)
    interactive: bool = flag(False, "ask even when stdin is not a terminal (answers piped in)", group="run",
                             run_only=True)
    sweep: bool = flag(False, "print (and write sweep.csv) clusters/outliers/silhouette for a grid of "
                              "min_cluster_size x epsilon first; without a terminal and parameters, stop there",
                       group="run", run_only=True)
    no_show: bool = flag(False, "never open plot windows", group="run", run_only=True)
    link: str = flag("copy", "copy images into the cluster folders or link them (saves disk)", group="run",
                     choices=["copy", "symlink", "hardlink"])
    quiet: bool = flag(False, "no progress bar", group="run", run_only=True)
    overwrite: bool = flag(False, "replace a finished output folder, e.g. after photos were added, removed "
                                  "or changed (cached features of unchanged images are reused; there is no "
                                  "--update: every image is clustered again)", group="run", run_only=True)


RUN_ONLY["1-clustering"] = run_only(ClusterSettings)
