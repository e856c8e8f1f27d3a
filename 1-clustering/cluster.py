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

from wingclr import cli  # noqa: E402
from wingclr.cluster.settings import ClusterSettings  # noqa: E402
from wingclr.cluster.stage import run_clustering  # noqa: E402
from wingclr.models import BACKBONES, check_backbone  # noqa: E402


def get_args_parser():
    p = cli.parser(__doc__)
    p.add_argument("--input", type=Path, default=cli.STAGE_DIRS["segmentation"] / "images",
                   help="image folder (subfolders allowed); stage 0's output folder works too")
    p.add_argument("--output", type=Path, default=cli.STAGE_DIRS["clustering"], help="output folder")
    f = p.add_argument_group("features (cached in <output>/features.npy)")
    f.add_argument("--backbone", type=check_backbone, default="vgg16",
                   help=f"ImageNet network whose features are clustered (vgg16: 4096-d fc7; "
                        f"{', '.join(sorted(BACKBONES))} or timm/<model>, e.g. timm/efficientnet_lite0)")
    cli.add_pretrained_args(f)
    f.add_argument("--allow-random-features", action="store_true",
                   help="accept --pretrained none: random features cluster by colour and pose, "
                        "not pattern (for testing the pipeline; the output is marked)")
    f.add_argument("--input-size", type=int, default=224,
                   help="images are letterboxed to this side (px) before the network")
    f.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    f.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader workers that decode images (default min(8, CPUs))")
    f.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    cli.add_background_arg(f)
    u = p.add_argument_group("UMAP (3-D)")
    u.add_argument("--n-neighbors", type=int, default=15, help="UMAP neighbourhood size")
    u.add_argument("--min-dist", type=float, default=0.1, help="UMAP minimum distance")
    u.add_argument("--metric", default="euclidean", help="feature distance (euclidean, cosine, ...)")
    u.add_argument("--pca-dims", type=int, default=0,
                   help="reduce features to this many principal axes before UMAP (0: off)")
    u.add_argument("--seed", type=int, default=0,
                   help="random seed (UMAP; also the weights with --pretrained none)")
    h = p.add_argument_group("HDBSCAN (asked interactively; these give the defaults)")
    h.add_argument("--min-cluster-size", type=int, default=None,
                   help="smallest group that counts as a cluster (batch default 20)")
    h.add_argument("--cluster-selection-epsilon", type=float, default=None,
                   help="merge clusters closer than this in UMAP space (batch default 0.0)")
    h.add_argument("--min-samples", type=int, default=None,
                   help="HDBSCAN min_samples (default: min_cluster_size)")
    r = p.add_argument_group("how to run")
    r.add_argument("--yes", action="store_true",
                   help="no questions: cluster once with the given (or default) parameters and keep")
    r.add_argument("--interactive", action="store_true",
                   help="ask even when stdin is not a terminal (answers piped in)")
    r.add_argument("--sweep", action="store_true",
                   help="print (and write sweep.csv) clusters/outliers/silhouette for a grid of "
                        "min_cluster_size x epsilon first; without a terminal and parameters, stop there")
    r.add_argument("--no-show", action="store_true", help="never open plot windows")
    r.add_argument("--link", choices=["copy", "symlink", "hardlink"], default="copy",
                   help="copy images into the cluster folders or link them (saves disk)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--overwrite", action="store_true",
                   help="replace a finished output folder, e.g. after photos were added, removed "
                        "or changed (cached features of unchanged images are reused; there is no "
                        "--update: every image is clustered again)")
    return p


def main(args):
    return run_clustering(ClusterSettings.from_args(args))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
