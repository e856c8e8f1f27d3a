"""Stage 2: split cluster folders into unlabeled/ (all images), train/ (80 %) and validation/ (20 %).

The split is per cluster and reproducible with --seed. Outliers (outliers/) go to unlabeled/ only.
Every image is decoded once; unreadable and non-image files are listed and skipped.

Examples:
    python 2-create_dataset/create_dataset.py                       # work/1-clusters -> work/2-dataset
    python 2-create_dataset/create_dataset.py --input my_clusters --output work/2-dataset
    python 2-create_dataset/create_dataset.py --link symlink        # large sets: link, don't copy
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wingclr import cli  # noqa: E402
from wingclr.split import DatasetSettings, create_dataset  # noqa: E402


def get_args_parser():
    p = cli.parser(__doc__)
    p.add_argument("--input", type=Path, default=cli.STAGE_DIRS["clustering"],
                   help="folder with one subfolder per cluster (stage 1 output or hand-made)")
    p.add_argument("--output", type=Path, default=cli.STAGE_DIRS["dataset"], help="output folder")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of each cluster that goes to validation/")
    p.add_argument("--seed", type=int, default=0, help="random seed of the split")
    p.add_argument("--link", choices=["copy", "symlink", "hardlink"], default="copy",
                   help="copy the images or link to them (saves disk for large sets)")
    p.add_argument("--outliers-folder", default="outliers",
                   help="subfolder whose images go to unlabeled/ only")
    p.add_argument("--num-workers", type=int, default=4, help="threads that check the images")
    cli.add_quiet_arg(p, help="no progress while copying / linking (the summary table stays)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished output folder")
    p.add_argument("--update", action="store_true",
                   help="after images were added, removed or changed in --input: keep every "
                        "image's split, place the new images (drawn per cluster), drop removed "
                        "ones and copy changed ones again")
    return p


def main(args):
    create_dataset(DatasetSettings.from_args(args))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
