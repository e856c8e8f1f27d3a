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

from wingclr import cli, flags  # noqa: E402
from wingclr.dataset import DatasetSettings, create_dataset  # noqa: E402


def get_args_parser():
    """Every flag, from its one declaration (wingclr/dataset/__init__.py DatasetSettings)."""
    return flags.parser(DatasetSettings, __doc__)


def main(args):
    create_dataset(DatasetSettings.from_args(args))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
