"""Stage 5: linear evaluation of frozen embeddings: trained on train/, scored on validation/.

Per run: logistic-regression probe (standardised features, L2 strength chosen by cross-validation
on train only), kNN accuracy, report.csv, classification_report.txt, confusion_matrix.png. Each run
adds (or replaces) its row in evaluation.csv, so the 27 grid runs compare in one table. Classes are
the clusters, or your own labels with --labels (CSV with columns image,label).

Examples:
    python 5-evaluation/evaluate.py                               # every run in work/4-embeddings
    python 5-evaluation/evaluate.py --runs work/3-training/*      # embeds first where needed
    python 5-evaluation/evaluate.py --labels species.csv
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wingclr import cli  # noqa: E402


def get_args_parser():
    p = cli.parser(__doc__)
    p.add_argument("--runs", type=Path, nargs="*", default=[],
                   help="embedding folders, training-run folders or checkpoints (default: all "
                        "finished embeddings)")
    p.add_argument("--embeddings", type=Path, default=cli.STAGE_DIRS["embedding"],
                   help="stage 4 output folder")
    p.add_argument("--data", type=Path, default=cli.STAGE_DIRS["dataset"],
                   help="stage 2 output, used when a run still has to be embedded")
    p.add_argument("--output", type=Path, default=cli.STAGE_DIRS["evaluation"], help="output folder")
    p.add_argument("--labels", type=Path, default=None,
                   help="CSV with columns image,label to use instead of the clusters")
    p.add_argument("--knn-k", type=int, default=20, help="neighbours for the kNN accuracy")
    p.add_argument("--seed", type=int, default=0, help="seed of the cross-validation folds")
    return p


def main(args):
    from wingclr.evaluation import evaluate_runs

    evaluate_runs(args)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
