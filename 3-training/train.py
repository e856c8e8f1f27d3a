"""Stage 3: SimCLR training (lightly + PyTorch Lightning) on the images of stage 2's unlabeled/.

Defaults: ResNet-50 from ImageNet weights, batch 256, 300 epochs, temperature 0.5, the original
butterfly pipeline's augmentations and optimiser (--recipe phenotype; --recipe simclr for lightly's
ImageNet recipe). --param-i 1..27 picks one point of batch {64,128,256} x epochs {50,100,300} x
temperature {0.1,0.5,0.8} so the grid runs as a SLURM array (see grid.sbatch); --grid grid.csv or
--batch-sizes/--epoch-list/--temperatures give your own grid, and --batch-size/--epochs/--temperature
fix one axis of it. A grid point whose batch exceeds the training images is clamped to the largest
power of two they hold (or skipped when another point trains that). Re-running the same command
resumes from last.ckpt; a finished run is skipped. --batch-size is the global batch (split over GPUs with --devices).
SIGTERM, SIGUSR1 or Ctrl-C saves last.ckpt after the current batch and stops (exit 128 + signal;
SIGUSR1 requeues a SLURM job). A second command for a run that is training is refused (<output>/.<run>.lock).

Examples:
    python 3-training/train.py                                  # work/2-dataset -> work/3-training
    python 3-training/train.py --param-i 14                     # one grid point
    python 3-training/train.py --list-grid                      # the 27 grid points
    python 3-training/train.py --list-grid --batch-sizes 32,64 --temperatures 0.1,0.5  # 2 x 3 x 2
    python 3-training/train.py --grid grid.csv --param-i 3      # row 3 of your grid
    python 3-training/train.py --backbone timm/efficientnet_lite0 --input-size 128  # any timm model
    python 3-training/train.py --backbone resnet18 --pretrained none --input-size 96 \\
        --batch-size 64 --epochs 20                             # laptop CPU, no weights needed
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wingclr import cli  # noqa: E402
from wingclr.ssl.bands import parse_bands  # noqa: E402
from wingclr.ssl.grid import (BATCH_SIZES, DEFAULTS, EPOCHS, TEMPERATURES, grid_table,  # noqa: E402
                              value_list)
from wingclr.models import BACKBONES, check_backbone  # noqa: E402
from wingclr.ssl.recipes import add_recipe_args  # noqa: E402
from wingclr.ssl.settings import TrainSettings  # noqa: E402


def join(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def get_args_parser():
    p = cli.parser(__doc__)
    p.add_argument("--data", type=Path, default=cli.STAGE_DIRS["dataset"],
                   help="stage 2 output (its unlabeled/ is used) or any folder of cluster folders")
    p.add_argument("--output", type=Path, default=cli.STAGE_DIRS["training"],
                   help="folder that holds one subfolder per run")
    p.add_argument("--run-name", default=None,
                   help="run folder name (default simclr_bs_<b>_nepochs_<e>_temp_<t>)")
    g = p.add_argument_group("grid")
    g.add_argument("--param-i", type=int, default=None, help="grid point 1..N (see --list-grid)")
    g.add_argument("--list-grid", action="store_true",
                   help="print the grid in use (numbered) and the --array to submit, and exit")
    g.add_argument("--grid", type=Path, default=None,
                   help="CSV, one row per grid point; columns batch_size, epochs, temperature "
                        "(any subset: the others come from the flags below or their defaults)")
    g.add_argument("--batch-sizes", type=value_list(int), default=None,
                   help=f"grid batch sizes, e.g. 32,64 (default {join(BATCH_SIZES)})")
    g.add_argument("--epoch-list", type=value_list(int), default=None,
                   help=f"grid epochs, e.g. 50,100 (default {join(EPOCHS)})")
    g.add_argument("--temperatures", type=value_list(float), default=None,
                   help=f"grid temperatures, e.g. 0.1,0.5 (default {join(TEMPERATURES)})")
    # cli.Given notes which of these were typed: a typed one fixes its axis of a --param-i grid
    g.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], action=cli.Given,
                   help="global batch size, 2..65536; typed with --param-i, it fixes that axis")
    g.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], action=cli.Given,
                   help="1..100000 epochs")
    g.add_argument("--temperature", type=float, default=DEFAULTS["temperature"], action=cli.Given,
                   help="0.01..10 (these ranges hold for grid values too): NT-Xent temperature")
    m = p.add_argument_group("model")
    m.add_argument("--backbone", type=check_backbone, default="resnet50",
                   help=f"{', '.join(sorted(BACKBONES))} or timm/<model> (e.g. timm/efficientnet_lite0)")
    cli.add_pretrained_args(m)
    m.add_argument("--input-size", type=int, default=224, help="side of the training views (px)")
    m.add_argument("--channels-last", choices=["on", "off"], default="on",
                   help="channels_last memory format (faster convolutions on GPUs and CPUs)")
    m.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    add_recipe_args(p)
    mo = p.add_argument_group("monitor (kNN accuracy of stage 2's validation images during training)")
    mo.add_argument("--monitor-every", type=int, default=None,
                    help="score the backbone every N epochs and before training (epoch 0); 0 = off "
                         "(default: epochs / 10, at least 1; needs stage 2's split.csv in --data)")
    mo.add_argument("--labels", type=Path, default=None,
                    help="CSV of classes for the monitor, as stage 5's --labels (default: the clusters, "
                         "a sanity check only)")
    mo.add_argument("--label-column", default="label", help="column of --labels holding the class (e.g. sex)")
    mo.add_argument("--id-column", default=None,
                    help="column of --labels naming the images (default: the first of specimen, "
                         "source_image, image it has; e.g. filename)")
    mo.add_argument("--select", choices=["last", "best"], default="last",
                    help="the run's checkpoint: the last epoch's weights, or the best-scoring epoch's "
                         "(epoch 0, the starting weights, included)")
    d = p.add_argument_group("data")
    d.add_argument("--augment-on", choices=["auto", "workers", "device"], default="auto",
                   help="augment per image in DataLoader workers or batched on the device "
                        "(auto: device on GPU, workers on CPU)")
    d.add_argument("--cache-size", type=int, default=None,
                   help="images are letterboxed to this side before cropping (default --input-size)")
    d.add_argument("--cache-dir", type=Path, default=cli.WORK / "cache",
                   help="decode-once image cache of the device path, shared by runs (safe to delete)")
    d.add_argument("--bands", type=parse_bands, default=None,
                   help="select/reorder bands, e.g. 0,1,2,6 (default all)")
    d.add_argument("--rgb-bands", default=None,
                   help="which bands (after --bands) are R,G,B, e.g. 0,1,2; colour jitter acts on "
                        "them (default 0,1,2 when there are >= 3 bands; '' for none)")
    d.add_argument("--views", default=None,
                   help="experimental cross-modal pairs: the two views come from two band groups, "
                        "e.g. rgb,uv (see --band-group)")
    d.add_argument("--band-group", action="append", default=[], metavar="NAME=BANDS",
                   help="define a band group for --views, e.g. uv=3 (rgb and all are predefined)")
    d.add_argument("--scale16", choices=["full", "band"], default="full",
                   help="16-bit to 8-bit: high byte (full) or per-band percentile stretch (band)")
    cli.add_background_arg(d)
    d.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader workers (default: min(8, CPUs) decoding for the workers path and the "
                        "cache build; reading the cache: 1 on CPU, min(4, CPUs) with a GPU)")
    h = p.add_argument_group("hardware")
    h.add_argument("--accelerator", default="auto", help="auto, cpu or gpu")
    h.add_argument("--devices", default="auto", help="GPUs per node (auto = all visible / 1 CPU)")
    h.add_argument("--num-nodes", type=int, default=1, help="nodes (SLURM multi-node)")
    h.add_argument("--precision", default="auto",
                   help="auto (bf16-mixed on GPU, 32-true on CPU), 32-true, 16-mixed, bf16-mixed")
    h.add_argument("--sync-batchnorm", action=argparse.BooleanOptionalAction, default=True,
                   help="with several processes (GPUs), BatchNorm statistics over the global batch, "
                        "as on one GPU (SimCLR's global BN; default); --no-sync-batchnorm: each "
                        "process normalises by its own share of the batch")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    cli.add_quiet_arg(p, help="no progress bar and no line per epoch")
    p.add_argument("--overwrite", action="store_true",
                   help="train the run again from scratch in <output>/.<run>.new/; it replaces the "
                        "finished run only when it finishes (re-run to resume it)")
    p.add_argument("--keep-last", action="store_true",
                   help="keep last.ckpt (the full training state, larger than the weights) beside the final "
                        "checkpoint; it lets a damaged final checkpoint be rebuilt without training")
    p.add_argument("--save-every-min", type=float, default=10.0,
                   help="save last.ckpt at the end of the first epoch this many minutes after the last "
                        "save (0: every epoch); a stop signal always saves")
    p.add_argument("--cache-only", action="store_true",
                   help="build the uint8 image cache of the device path (--cache-dir) and exit 0, "
                        "without a GPU (3-training/cache.sbatch); grid jobs then only read it")
    return p


def main(args):
    settings = TrainSettings.from_args(args)
    if settings.list_grid:
        print(grid_table(settings.grid_points()))
        return
    from wingclr.ssl.training import train

    return train(settings)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
