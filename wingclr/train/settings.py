"""Stage 3's flags, each declared once (name, type, default, help, ``--help`` section, run-only), and
every stage 3 default: the grid, the recipes, the optimisers' base rates. ``3-training/train.py``'s
parser, the frozen :class:`TrainSettings` and ``outputs.RUN_ONLY["3-training"]`` are built from it
(:mod:`wingclr.flags`); :mod:`~wingclr.train.grid`, :mod:`~wingclr.train.recipes` and
:mod:`~wingclr.train.simclr` read their defaults here. To add a flag, add one field below.

Recipes (``--recipe``; each recipe flag given explicitly overrides its value):

* ``phenotype`` (default): the original butterfly pipeline's recipe (Puissant et al.,
  ``SimCLR_phenotypic_convergence/MachineLearning/C-Training/1-simCLR_training.py``): no colour
  jitter and no blur, so colour patterns stay informative; crops of >= 50 % of the specimen;
  vertical flips and 90-degree rotations (a specimen photo has no "up"); grayscale 0.2 (lightly's
  default, which the original kept); SGD lr 0.01, momentum 0.9, weight decay 5e-4 with cosine decay
  over the run and no warm-up or batch scaling. The original also sampled every cluster equally
  often (``WeightedRandomSampler``); here every image is drawn equally often (``--balance none``):
  on skewed clusters (one big cluster, many tiny ones, as stage 1 gives on a real drawer)
  balancing made every task worse (README "Real specimens"). From ImageNet, the checkpoint holds
  0.75 x the ImageNet start + 0.25 x the trained weights (``--interpolate 0.25``, WiSE-FT,
  :mod:`wingclr.train.interpolate`): on skewed collections the trained weights alone scored below
  their ImageNet start, the mixture at or above it.
* ``simclr``: lightly's ImageNet recipe (SimCLR paper): colour jitter 0.8, grayscale 0.2, blur
  0.5, crops down to 8 %, horizontal flips only; SGD 0.06 x sqrt(batch / 256) after a warm-up.
* ``cpu``: ``simclr`` for a few hundred steps from random initialisation on a laptop (``make demo``,
  ``benchmarks/probe_common.py``): Adam 2e-3 x sqrt(batch / 256), crops >= 30 %, no blur. With
  SGD, crops down to 8 % of a 64 px image and blur, such short runs learn little (measured in
  ``benchmarks/demo_probe.py``); pair it with ``--temperature 0.2``.

Why ``phenotype`` is the default: README "Real specimens" (benchmarks/real_specimens.py).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from .. import cli
from .bands import parse_bands
from ..flags import flag, run_only, value_list
from ..models import BACKBONES, check_backbone
from ..outputs import RUN_ONLY

STAGE = "3-training"  # the manifest's stage name

# The default --param-i grid: batch x epochs x temperature (27 points, batch varies slowest).
BATCH_SIZES = (64, 128, 256)
EPOCHS = (50, 100, 300)
TEMPERATURES = (0.1, 0.5, 0.8)

RECIPES = {
    "phenotype": {"min_scale": 0.5, "cj_prob": 0.0, "gray_prob": 0.2, "blur_prob": 0.0,
                  "vf_prob": 0.5, "rr_prob": 0.5, "optimizer": "sgd", "lr": 0.01,
                  "lr_scaling": "none", "weight_decay": 5e-4, "warmup_epochs": 0,
                  "balance": "none", "backbone_lr_scale": 1.0, "bn": "train", "forward": "separate",
                  "interpolate": 0.25},
    "simclr": {"min_scale": 0.08, "cj_prob": 0.8, "gray_prob": 0.2, "blur_prob": 0.5,
               "vf_prob": 0.0, "rr_prob": 0.0, "optimizer": "sgd", "lr": None,
               "lr_scaling": "sqrt", "weight_decay": None, "warmup_epochs": 10,
               "balance": "none", "backbone_lr_scale": 1.0, "bn": "train", "forward": "separate",
               "interpolate": 1.0},
}
RECIPES["cpu"] = {**RECIPES["simclr"], "min_scale": 0.3, "blur_prob": 0.0, "optimizer": "adam", "lr": 2e-3}
DEFAULT_RECIPE = "phenotype"
# The optimisers' rates where a recipe leaves them to the optimiser (simclr, cpu: lr at batch 256,
# scaled by sqrt(batch / 256); see wingclr/train/simclr.py).
BASE_LR = {"sgd": 0.06, "lars": 1.2, "adam": 1e-3}
WEIGHT_DECAY = {"sgd": 5e-4, "lars": 1e-6, "adam": 1e-6}


def _join(values) -> str:
    return ",".join(f"{v:g}" for v in values)


_R = {k: f"phenotype {RECIPES['phenotype'][k]}, simclr {RECIPES['simclr'][k]}" for k in RECIPES["simclr"]}


@dataclass(frozen=True, kw_only=True)
class TrainSettings(cli.Settings):
    """Every stage 3 flag. The field order is the manifest's "args" order (keep it: finished runs
    of earlier versions are recognised by it); ``GROUPS`` orders the ``--help`` sections.

    The recipe flags (``min_scale`` .. ``interpolate``) are None until
    :func:`~wingclr.train.recipes.resolve` fills them.
    """

    GROUPS = {  # --help sections: the common flags first, the rare ones under "advanced"
        None: "",
        "model": "model",
        "training": "training",
        "grid": "grid (one run per grid point: a SLURM array)",
        "hardware": "hardware",
        "monitor": "monitor (kNN accuracy of stage 2's validation images during training)",
        "recipe": "advanced: recipe values (flags given explicitly override the recipe)",
        "images": "advanced: images and bands",
        "speed": "advanced: speed, workers and saving",
    }

    data: Path = flag(cli.STAGE_DIRS["dataset"],
                      "stage 2 output (its unlabeled/ is used) or any folder of cluster folders")
    output: Path = flag(cli.STAGE_DIRS["training"], "folder that holds one subfolder per run")
    run_name: str | None = flag(None, "run folder name (default simclr_bs_<b>_nepochs_<e>_temp_<t>)")
    param_i: int | None = flag(None, "grid point 1..N (see --list-grid)", group="grid")
    list_grid: bool = flag(False, "print the grid in use (numbered) and the --array to submit, and exit",
                           group="grid")
    grid: Path | None = flag(None, "CSV, one row per grid point; columns batch_size, epochs, temperature "
                                   "(any subset: the others come from the flags below or their defaults)",
                             group="grid", run_only=True)
    batch_sizes: tuple[int, ...] | None = flag(
        None, f"grid batch sizes, e.g. 32,64 (default {_join(BATCH_SIZES)})", type=value_list(int),
        group="grid", run_only=True)
    epoch_list: tuple[int, ...] | None = flag(
        None, f"grid epochs, e.g. 50,100 (default {_join(EPOCHS)})", type=value_list(int),
        group="grid", run_only=True)
    temperatures: tuple[float, ...] | None = flag(
        None, f"grid temperatures, e.g. 0.1,0.5 (default {_join(TEMPERATURES)})", type=value_list(float),
        group="grid", run_only=True)
    # cli.Given notes which of these were typed: a typed one fixes its axis of a --param-i grid
    batch_size: int = flag(256, "global batch size, 2..65536; typed with --param-i, it fixes that axis",
                           action=cli.Given, group="training")
    epochs: int = flag(300, "1..100000 epochs", action=cli.Given, group="training")
    temperature: float = flag(0.5, "0.01..10 (these ranges hold for grid values too): NT-Xent temperature",
                              action=cli.Given, group="training")
    backbone: str = flag("resnet50", f"{', '.join(sorted(BACKBONES))} or timm/<model> (e.g. "
                                     "timm/efficientnet_lite0)", type=check_backbone, group="model")
    pretrained: str = flag("imagenet", cli.PRETRAINED_HELP, choices=["imagenet", "none"],
                           also=[cli.NO_PRETRAINED], group="model")
    input_size: int = flag(224, "side of the training views (px)", group="model")
    channels_last: str = flag("on", "channels_last memory format (faster convolutions on GPUs and CPUs)",
                              choices=["on", "off"], group="speed")
    compile: bool = flag(False, "torch.compile the model (GPU)", group="speed", run_only=True)
    recipe: str = flag(DEFAULT_RECIPE,
                       "phenotype: the original butterfly pipeline (no colour jitter or blur, "
                       "crops >= 50 %%, flips and 90-degree turns, SGD 0.01, every image drawn equally "
                       "often); simclr: lightly's ImageNet recipe; cpu: simclr with Adam 2e-3, crops >= "
                       "30 %%, no blur, for short CPU runs (make demo)", choices=sorted(RECIPES),
                       group="training")
    min_scale: float | None = flag(
        None, f"smallest random-resized-crop area, fraction of the image ({_R['min_scale']})", group="recipe")
    cj_prob: float | None = flag(None, f"colour-jitter probability ({_R['cj_prob']})", group="recipe")
    gray_prob: float | None = flag(None, f"grayscale probability ({_R['gray_prob']})", group="recipe")
    blur_prob: float | None = flag(None, f"Gaussian-blur probability per view ({_R['blur_prob']})",
                                   group="recipe")
    vf_prob: float | None = flag(None, f"vertical-flip probability ({_R['vf_prob']})", group="recipe")
    rr_prob: float | None = flag(None, f"probability of a 90-degree rotation ({_R['rr_prob']})",
                                 group="recipe")
    optimizer: str | None = flag(None, f"optimizer ({_R['optimizer']})", choices=["sgd", "lars", "adam"],
                                 group="recipe")
    lr: float | None = flag(None, f"learning rate (phenotype {RECIPES['phenotype']['lr']}; simclr: sgd "
                                  f"{BASE_LR['sgd']}, lars {BASE_LR['lars']}, adam {BASE_LR['adam']} at "
                                  "batch 256)", group="recipe")
    lr_scaling: str | None = flag(None, f"sqrt: lr x sqrt(batch / 256); none: lr as given ({_R['lr_scaling']})",
                                  choices=["sqrt", "none"], group="recipe")
    weight_decay: float | None = flag(None, "weight decay (phenotype 5e-4; simclr: sgd 5e-4, lars/adam 1e-6)",
                                      group="recipe")
    warmup_epochs: int | None = flag(
        None, f"linear learning-rate warm-up, at most 10 %% of the run ({_R['warmup_epochs']})", group="recipe")
    balance: str | None = flag(
        None, "clusters: every cluster drawn equally often (1 / size); sqrt: in proportion to the square "
              "root of its size; none: every image equally often; an image is never drawn twice into one "
              f"batch ({_R['balance']})", choices=["none", "sqrt", "clusters"], group="recipe")
    backbone_lr_scale: float | None = flag(
        None, "the backbone's learning rate as a fraction of --lr (the projection head trains at --lr); "
              f"used when starting from --pretrained imagenet, 1 from random init ({_R['backbone_lr_scale']})",
        group="recipe")
    bn: str | None = flag(
        None, "backbone BatchNorm: train (batch statistics, running averages updated) or frozen (the "
              f"pretrained statistics kept; affine weights still train) ({_R['bn']})",
        choices=["train", "frozen"], group="recipe")
    forward: str | None = flag(
        None, "joint: one forward pass of both views concatenated (BatchNorm statistics over both, as "
              f"lightly's benchmarks); separate: one pass per view ({_R['forward']})",
        choices=["joint", "separate"], group="recipe")
    interpolate: float | None = flag(
        None, "the checkpoint's backbone is (1 - a) x the ImageNet start + a x the trained weights "
              "(WiSE-FT; 1: the trained weights as they are); used when starting from --pretrained "
              f"imagenet, 1 from random init ({_R['interpolate']})", group="recipe")
    monitor_every: int | None = flag(
        None, "score the backbone every N epochs and before training (epoch 0); 0 = off (default: "
              "epochs / 10, at least 1; needs stage 2's split.csv in --data)", group="monitor")
    labels: Path | None = flag(None, "CSV of classes for the monitor, as stage 5's --labels (default: the "
                                     "clusters, a sanity check only)", group="monitor")
    label_column: str = flag("label", "column of --labels holding the class (e.g. sex)", group="monitor")
    id_column: str | None = flag(None, "column of --labels naming the images (default: the first of "
                                       "specimen, source_image, image it has; e.g. filename)", group="monitor")
    select: str = flag("last", "the run's checkpoint: the last epoch's weights, or the best-scoring "
                               "epoch's (epoch 0, the starting weights, included)",
                       choices=["last", "best"], group="monitor")
    augment_on: str = flag("auto", "augment per image in DataLoader workers or batched on the device "
                                   "(auto: device on GPU, workers on CPU)",
                           choices=["auto", "workers", "device"], group="speed")
    cache_size: int | None = flag(None, "images are letterboxed to this side before cropping (default "
                                        "--input-size)", group="images")
    cache_dir: Path = flag(cli.WORK / "cache", "decode-once image cache of the device path, shared by runs "
                                               "(safe to delete)", group="speed", run_only=True)
    bands: tuple[int, ...] | None = flag(None, "select/reorder bands, e.g. 0,1,2,6 (default all)",
                                         type=parse_bands, group="images")
    rgb_bands: str | None = flag(None, "which bands (after --bands) are R,G,B, e.g. 0,1,2; colour jitter "
                                       "acts on them (default 0,1,2 when there are >= 3 bands; '' for none)",
                                 group="images")
    views: str | None = flag(None, "experimental cross-modal pairs: the two views come from two band "
                                   "groups, e.g. rgb,uv (see --band-group)", group="images")
    band_group: tuple[str, ...] = flag((), "define a band group for --views, e.g. uv=3 (rgb and all are "
                                           "predefined)", action="append", metavar="NAME=BANDS",
                                       group="images")
    scale16: str = flag("full", "16-bit to 8-bit: high byte (full) or per-band percentile stretch (band)",
                        choices=["full", "band"], group="images")
    background: tuple[int, int, int] = flag((255, 255, 255), cli.BACKGROUND_HELP, type=cli.parse_rgb,
                                            group="images")
    num_workers: int | None = flag(
        None, "DataLoader workers (default: min(8, CPUs) decoding for the workers path and the cache build; "
              "reading the cache: 1 on CPU, min(4, CPUs) with a GPU)", group="speed", run_only=True)
    accelerator: str = flag("auto", "auto, cpu or gpu", group="hardware", run_only=True)
    devices: str = flag("auto", "GPUs per node (auto = all visible / 1 CPU)", group="hardware", run_only=True)
    num_nodes: int = flag(1, "nodes (SLURM multi-node)", group="hardware", run_only=True)
    precision: str = flag("auto", "auto (bf16-mixed on GPU, 32-true on CPU), 32-true, 16-mixed, bf16-mixed",
                          group="hardware")
    sync_batchnorm: bool = flag(
        True, "with several processes (GPUs), BatchNorm statistics over the global batch, as on one GPU "
              "(SimCLR's global BN; default); --no-sync-batchnorm: each process normalises by its own "
              "share of the batch", action=argparse.BooleanOptionalAction, group="speed")
    seed: int = flag(0, "random seed")
    quiet: bool = flag(False, "no progress bar and no line per epoch", run_only=True)
    overwrite: bool = flag(False, "train the run again from scratch in <output>/.<run>.new/; it replaces "
                                  "the finished run only when it finishes (re-run to resume it)", run_only=True)
    keep_last: bool = flag(False, "keep last.ckpt (the full training state, larger than the weights) beside "
                                  "the final checkpoint; it lets a damaged final checkpoint be rebuilt "
                                  "without training", group="speed", run_only=True)
    save_every_min: float = flag(10.0, "save last.ckpt at the end of the first epoch this many minutes "
                                       "after the last save (0: every epoch); a stop signal always saves",
                                 group="speed", run_only=True)
    cache_only: bool = flag(False, "build the uint8 image cache of the device path (--cache-dir) and exit 0, "
                                   "without a GPU (3-training/cache.sbatch); grid jobs then only read it",
                            group="speed", run_only=True)


RUN_ONLY[STAGE] = run_only(TrainSettings)
