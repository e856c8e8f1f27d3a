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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wingclr import cli, flags  # noqa: E402
from wingclr.train.grid import grid_points, grid_table  # noqa: E402
from wingclr.train.settings import TrainSettings  # noqa: E402


def get_args_parser():
    """Every flag, from its one declaration in wingclr/train/settings.py (rare ones under "advanced")."""
    return flags.parser(TrainSettings, __doc__)


def main(args):
    settings = TrainSettings.from_args(args)
    if settings.list_grid:
        print(grid_table(grid_points(settings)))
        return
    from wingclr.train.run import train

    return train(settings)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
