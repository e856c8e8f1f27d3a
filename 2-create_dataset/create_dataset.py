"""Stage 2: split cluster folders into unlabeled/ (all images), train/ (80 %) and validation/ (20 %).

The split is per cluster and reproducible with --seed. Outliers (outliers/) go to unlabeled/ only.
Photos of one specimen (e.g. dorsal and ventral views) stay on one side with --group-by or
--groups. Every image is decoded once; unreadable and non-image files are listed and skipped.

Examples:
    python 2-create_dataset/create_dataset.py                       # work/1-clusters -> work/2-dataset
    python 2-create_dataset/create_dataset.py --input my_clusters --output work/2-dataset
    python 2-create_dataset/create_dataset.py --link symlink        # large sets: link, don't copy
    python 2-create_dataset/create_dataset.py --group-by '^(.*?)[DV]$'   # ACC0286D + ACC0286V together
    python 2-create_dataset/create_dataset.py --groups labels.csv --group-column id
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
    p.add_argument("--group-by", metavar="REGEX", default=None,
                   help="regular expression searched in each file name without extension; its "
                        "first capture group (or the match) is the specimen, whose photos land on "
                        "one side of the split, e.g. '^(.*?)[DV]$' drops a trailing D/V view "
                        "letter (default: one photo, one group)")
    p.add_argument("--groups", type=Path, default=None, metavar="CSV",
                   help="CSV naming each photo's specimen group (with --group-column); rows "
                        "match photos by specimen, source_image, image or file name")
    p.add_argument("--group-column", default=None,
                   help="column of --groups holding the group (e.g. id)")
    p.add_argument("--group-id-column", default=None,
                   help="column of --groups naming the photo (default: the first of specimen, "
                        "source_image, image it has; e.g. filename)")
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
