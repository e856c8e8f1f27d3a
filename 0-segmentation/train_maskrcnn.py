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

from wingclr import cli  # noqa: E402
from wingclr.demo import WING_CLASSES  # noqa: E402
from wingclr.segment.maskrcnn import ARCHS  # noqa: E402
from wingclr.segment.settings import MaskRCNNSettings  # noqa: E402
from wingclr.segment.train_maskrcnn import train_maskrcnn  # noqa: E402


def _names(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def get_args_parser():
    p = cli.parser(__doc__)
    p.add_argument("--images", type=Path, required=True, help="folder of annotated photos")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--annotations", type=Path,
                     help="COCO JSON file (file_name relative to --images), or a folder of labelme "
                          ".json files (classes: --classes, else the labels found, sorted)")
    src.add_argument("--masks", type=Path, help="folder of label-mask PNGs paired with --images")
    p.add_argument("--mask-suffix", default="", help="text between the image name and .png in mask names")
    p.add_argument("--classes", type=_names, default=None,
                   help="comma-separated names of mask labels 1..K (default for --masks: "
                        f"{','.join(WING_CLASSES)}; COCO files name their categories)")
    p.add_argument("--output", type=Path, default=None,
                   help="best checkpoint (default: weights/maskrcnn_wings.pth)")
    p.add_argument("--work-dir", type=Path, default=Path("work/0-maskrcnn"),
                   help="metrics.csv, last.pth (resume) and manifest.json")
    p.add_argument("--arch", choices=list(ARCHS), default="maskrcnn_resnet50_fpn", help="Mask R-CNN variant")
    p.add_argument("--pretrained", choices=["coco", "none"], default="coco",
                   help="start from COCO weights (from weights/, see weights/README.md) or random")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_const", const="none",
                   help="same as --pretrained none")
    p.add_argument("--init", type=Path, default=None,
                   help="continue from a checkpoint of this script (its classes must match)")
    p.add_argument("--trainable-backbone-layers", type=int, default=3,
                   help="ResNet stages trained (0-5); the others stay frozen")
    p.add_argument("--epochs", type=int, default=20, help="passes over the training photos")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: no limit)")
    p.add_argument("--batch-size", type=int, default=2, help="photos per training step")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (cosine decay)")
    p.add_argument("--warmup-steps", type=int, default=200, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="SGD weight decay")
    p.add_argument("--min-size", type=int, default=640, help="shorter side the model resizes to")
    p.add_argument("--max-size", type=int, default=1024, help="longer side limit of that resize")
    p.add_argument("--rois-per-image", type=int, default=128,
                   help="proposals sampled per photo for the box and mask heads")
    p.add_argument("--scale-jitter", type=float, default=0.25,
                   help="training sizes vary within min-size x (1 +- jitter)")
    p.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability (swaps left/right)")
    p.add_argument("--vflip", type=float, default=0.0, help="vertical flip probability")
    p.add_argument("--max-side", type=int, default=2048, help="photos are read downscaled to this side")
    p.add_argument("--val-fraction", type=float, default=0.2, help="photos held out for validation")
    p.add_argument("--score-threshold", type=float, default=0.5, help="detection score used in validation")
    p.add_argument("--seed", type=int, default=0, help="random seed (split, flips, initialisation)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--num-workers", type=int, default=2, help="data loading processes")
    cli.add_quiet_arg(p, help="no line per epoch (the start line and the result stay)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again, replacing --output and the work folder's run")
    return p


def main(args):
    # --masks without --classes: the demo's wing classes (recorded in the manifest as trained)
    classes = WING_CLASSES if args.masks and args.classes is None else args.classes
    return train_maskrcnn(MaskRCNNSettings.from_args(args, classes=classes))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
