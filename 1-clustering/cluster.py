"""Stage 1: cluster specimen images: VGG16 features -> 3-D UMAP -> HDBSCAN, keep or retry.

Asks min_cluster_size and cluster_selection_epsilon, prints the number of clusters, outliers and
the average silhouette (in the 3-D UMAP space, which flatters, and in the feature space), draws
the 3-D UMAP scatter and the silhouette plot (shown in a window when there is a display: close it
to continue), then asks "keep (1) or retry (0)". A retry reuses the cached features and UMAP
embedding. Writes cluster_<k>/ and outliers/ (stage 2's input), clusters.csv, umap_3d.png,
silhouette.png and manifest.json.

Without ImageNet weights there are two ways on: fetch them (python -m wingclr.weights fetch vgg16
on a machine with internet, see weights/README.md), or skip this stage and sort the photos into
one folder per group yourself: 2-create_dataset/create_dataset.py --input <folder of group folders>.
Random features (--pretrained none) are refused unless --allow-random-features is given too.

Examples:
    python 1-clustering/cluster.py                          # work/0-segmented/images -> work/1-clusters
    python 1-clustering/cluster.py --sweep                  # table of parameters -> clusters, silhouette
    python 1-clustering/cluster.py --min-cluster-size 20 --cluster-selection-epsilon 0.1 --yes
                                                            # batch / SLURM / CI: no questions
    python -m wingclr.weights fetch vgg16                   # the ImageNet weights (machine with internet)
    python 1-clustering/cluster.py --input my_photos --pretrained none --allow-random-features
                                                            # pipeline test only: random features
    printf '20\\n0.1\\n1\\n' | python 1-clustering/cluster.py --interactive   # answers from a pipe
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wingclr import cli, flags  # noqa: E402
from wingclr.cluster.settings import ClusterSettings  # noqa: E402
from wingclr.cluster.stage import run_clustering  # noqa: E402


def get_args_parser():
    """Every flag, from its one declaration (wingclr/cluster/settings.py ClusterSettings)."""
    return flags.parser(ClusterSettings, __doc__)


def main(args):
    return run_clustering(ClusterSettings.from_args(args))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
