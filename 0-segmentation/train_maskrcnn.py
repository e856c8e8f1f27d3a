"""Fine-tune a Mask R-CNN on your wing annotations; the best checkpoint (by validation mask IoU)
is saved with its class names for segment.py.

Annotations: a COCO JSON file (polygons or RLE; --annotations), a folder of labelme JSON files
(--annotations FOLDER; one per photo, label names = classes, polygons / rectangles / circles;
the folder may be the photos folder itself) or a folder of label-mask PNGs (--masks; <masks>/<image's
relative path minus extension><suffix>.png, pixel value k = the k-th name of --classes,
0 = background; stage 0's palette masks work). Horizontal flips swap left/right class names.

Examples:
    python 0-segmentation/train_maskrcnn.py --images photos --annotations wings_coco.json
    python 0-segmentation/train_maskrcnn.py --images photos --annotations photos   # labelme .json beside the photos
    python 0-segmentation/train_maskrcnn.py --images work/demo/specimens --masks work/demo/masks \\
        --pretrained none --min-size 256 --max-size 256 --epochs 10     # CPU-sized smoke run
    python 0-segmentation/train_maskrcnn.py --images photos --masks wing_masks --device cuda \\
        --init weights/maskrcnn_wings.pth --output weights/maskrcnn_wings_v2.pth

Writes --output (default weights/maskrcnn_wings.pth) and, in --work-dir, metrics.csv (losses and
validation IoU per class per epoch), last.pth (re-running the same command resumes) and
manifest.json. --pretrained coco needs weights/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth (or the
v2 file; see weights/README.md).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wingclr import cli, flags  # noqa: E402
from wingclr.demo import WING_CLASSES  # noqa: E402
from wingclr.segment.settings import MaskRCNNSettings  # noqa: E402
from wingclr.segment.train_maskrcnn import train_maskrcnn  # noqa: E402


def get_args_parser():
    """Every flag, from its one declaration (wingclr/segment/settings.py MaskRCNNSettings)."""
    return flags.parser(MaskRCNNSettings, __doc__)


def main(args):
    # --masks without --classes: the demo's wing classes (recorded in the manifest as trained)
    classes = WING_CLASSES if args.masks and args.classes is None else args.classes
    return train_maskrcnn(MaskRCNNSettings.from_args(args, classes=classes))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
