"""Score stage 0's masks against ground-truth masks: IoU and Dice per image, for the union of
the wings and per wing class, to CSV (one row per photo; the means in <name>_summary.csv).

Ground truth: one mask per photo, <gt>/<photo's relative path minus extension><suffix>.png.
Label masks (0 background, 1..K classes, e.g. the demo's masks/) are scored per class too;
binary masks (0/255, e.g. Leeds <id>_mask.png) on the union only. Photos that stage 0 could not
segment (no_wings, unreadable) score 0, so failures count.

Examples:
    python 0-segmentation/evaluate_segmentation.py --pred work/0-segmented --gt work/demo/masks
    python 0-segmentation/evaluate_segmentation.py --pred work/leeds-seg \\
        --gt ../shared/data/butterflies/leeds/masks --gt-suffix _mask
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wingclr import cli  # noqa: E402
from wingclr.segment.metrics import evaluate_folder, summarise, summary_path  # noqa: E402


def get_args_parser():
    p = cli.parser(__doc__)
    p.add_argument("--pred", type=Path, default=cli.STAGE_DIRS["segmentation"],
                   help="output folder of segment.py")
    p.add_argument("--gt", type=Path, required=True, help="folder of ground-truth masks")
    p.add_argument("--gt-suffix", default="",
                   help="text between the photo's name and .png in ground-truth file names")
    p.add_argument("--gt-type", choices=["auto", "labels", "binary"], default="auto",
                   help="auto: masks holding only 0 and 255 are binary, others are label images")
    p.add_argument("--gt-classes", type=lambda s: [c.strip() for c in s.split(",") if c.strip()],
                   default=None,
                   help="comma-separated names of ground-truth labels 1..K when their order "
                        "differs from the checkpoint's classes")
    p.add_argument("--output", type=Path, default=None,
                   help="CSV to write, one row per photo (default: <pred>/evaluation.csv); the "
                        "means go to <name>_summary.csv beside it")
    return p


def main(args):
    table = evaluate_folder(args.pred, args.gt, args.output, args.gt_suffix, args.gt_type,
                            args.gt_classes)
    mean = summarise(table)
    scored = [c for c in table.columns if c.endswith("_iou")]
    print(f"{len(table)} images scored; mean IoU / Dice:")
    for col in scored:
        dice = col[:-4] + "_dice"
        print(f"  {col[:-4]:<20} IoU {mean[col]:.3f}  Dice {mean[dice]:.3f}")
    output = Path(args.output or Path(args.pred) / "evaluation.csv")
    print(f"wrote {output} and {summary_path(output)}")
    return table


if __name__ == "__main__":
    cli.run(main, get_args_parser())
