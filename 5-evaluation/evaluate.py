"""Stage 5: evaluate frozen embeddings: cross-validated over the labelled images (default), or
fitted on stage 2's train/ and scored on validation/ (--protocol split).

Per run, in <output>/<run>/: linear probe (standardised features, L2-regularised multinomial
logistic regression, strength chosen by cross-validation on train only), weighted kNN accuracy
(cosine, k=20), silhouette and Davies-Bouldin of the classes in embedding space, report.csv,
classification_report.txt, predictions.csv, confusion_matrix.png and umap.png. Baselines on the
same split: pixel PCA (raw pixels -> PCA fitted on train -> the same probe), the run's backbone with
ImageNet weights (needs the file in weights/) and, on request, at random initialisation. Every run
adds (or replaces) its row in evaluation.csv; grid_summary.png and summary.txt compare the grid.
Pictures per run: neighbours.png, sheets/ (contact sheet per class), gradcam/ (--gradcam N) and
stage 4's morphospace; report.html in the output folder shows everything on one page.
Classes are the clusters, or your own labels with --labels (CSV: label columns and an image,
specimen or source_image column, or --id-column); --label-column sex,genus scores each trait.
Folds (--protocol cv, --folds 5) keep the photos of one specimen together (the embeddings' group
column, or --group-column of --labels) and are the same for every run and baseline.

Examples:
    python 5-evaluation/evaluate.py                               # every run in work/4-embeddings
    python 5-evaluation/evaluate.py --runs work/3-training/*      # the grid; embeds where needed
    python 5-evaluation/evaluate.py --baselines pixel,imagenet,random --no-umap
    python 5-evaluation/evaluate.py --labels species.csv --output work/5-evaluation-species
    python 5-evaluation/evaluate.py --labels labels.csv --label-column sex,genus \\
        --id-column filename --group-column id
    python 5-evaluation/evaluate.py --gradcam 8 --neighbours 6      # then open report.html
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wingclr import cli  # noqa: E402
from wingclr.evaluate.visuals import count  # noqa: E402


def get_args_parser():
    p = cli.parser(__doc__)
    p.add_argument("--runs", type=Path, nargs="*", default=[],
                   help="embedding folders, training-run folders or checkpoints (default: all "
                        "finished embeddings); unfinished training runs are skipped")
    p.add_argument("--embeddings", type=Path, default=cli.STAGE_DIRS["embedding"],
                   help="stage 4 output folder")
    p.add_argument("--data", type=Path, default=None,
                   help="stage 2 output: images for the baselines and for runs that still have "
                        "to be embedded (default: the folder each run was embedded from, else "
                        f"{cli.STAGE_DIRS['dataset']})")
    p.add_argument("--output", type=Path, default=cli.STAGE_DIRS["evaluation"], help="output folder")
    p.add_argument("--labels", type=Path, default=None,
                   help="CSV with label column(s) (--label-column) and a column naming the images "
                        "(image, specimen, source_image or --id-column), used instead of the "
                        "clusters")
    p.add_argument("--label-column", default="label",
                   help="the --labels column(s) scored, comma-separated (e.g. sex,genus: one "
                        "block per trait); header names are matched ignoring case")
    p.add_argument("--id-column", default=None,
                   help="the --labels column naming the images (default: the first of specimen, "
                        "source_image, image it has; e.g. filename: file names match too)")
    p.add_argument("--group-column", default=None,
                   help="the --labels column giving each photo's specimen (e.g. id): the folds "
                        "keep a group together (default: the embeddings' group column, else "
                        "specimen)")
    p.add_argument("--protocol", choices=("cv", "split"), default="cv",
                   help="cv: stratified k-fold grouped by specimen over the labelled train and "
                        "validation images, mean +- sd over folds; split: fit on stage 2's "
                        "train/, score once on validation/")
    p.add_argument("--folds", type=int, default=5, help="folds of --protocol cv")
    p.add_argument("--allow-partial-labels", action="store_true",
                   help="evaluate even when fewer than half the embedded images have a label in "
                        "--labels (only the labelled ones are used)")
    p.add_argument("--knn-k", type=int, default=20, help="neighbours for the kNN accuracy")
    p.add_argument("--baselines", default="pixel,imagenet",
                   help="comma-separated: pixel (pixel PCA), imagenet (ImageNet weights, no "
                        "SimCLR), random (random init, no training); 'none' for no baselines")
    p.add_argument("--no-baselines", dest="baselines", action="store_const", const="none",
                   help="same as --baselines none")
    p.add_argument("--pixel-size", type=int, default=32,
                   help="side (px) the images are letterboxed to for the pixel-PCA baseline")
    p.add_argument("--no-umap", dest="umap", action="store_false",
                   help="skip umap.png (the first UMAP in a process costs ~10-30 s)")
    p.add_argument("--outliers-folder", default="outliers",
                   help="cluster drawn in grey in umap.png (stage 2's outliers)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the cross-validation folds, UMAP and the random-init baseline")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (baselines, embedding)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader workers for baselines/embedding (default min(8, CPUs))")
    p.add_argument("--cache-dir", type=Path, default=cli.WORK / "cache",
                   help="stage 3's decode-once image cache, read when a training run is embedded here")
    p.add_argument("--neighbours", type=count, default=5,
                   help="neighbours per query in each run's neighbours.png (0: none)")
    p.add_argument("--query", nargs="*", default=[],
                   help="images (paths as in embeddings.csv, or file names) shown with their "
                        "neighbours instead of 2 seeded ones per class")
    p.add_argument("--gradcam", type=count, default=0,
                   help="Grad-CAM figures of this many specimens per run (needs the run's "
                        "checkpoint; ~1 s each on a CPU)")
    cli.add_quiet_arg(p, help="no progress bar while embedding runs that have no embeddings yet")
    p.add_argument("--overwrite", action="store_true", help="evaluate finished runs again")
    return p


def main(args):
    from wingclr.evaluate.settings import EvalSettings
    from wingclr.evaluate.stage import evaluate_runs

    return evaluate_runs(EvalSettings.from_args(args))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
