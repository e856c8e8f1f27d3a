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

from wingclr import cli, flags  # noqa: E402
from wingclr.evaluate.settings import EvalSettings  # noqa: E402


def get_args_parser():
    """Every flag, from its one declaration (wingclr/evaluate/settings.py EvalSettings)."""
    return flags.parser(EvalSettings, __doc__)


def main(args):
    from wingclr.evaluate.stage import evaluate_runs

    return evaluate_runs(EvalSettings.from_args(args))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
