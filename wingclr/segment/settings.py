"""Stage 0's settings: every flag of ``0-segmentation/segment.py`` (:class:`SegmentSettings`) and
``0-segmentation/train_maskrcnn.py`` (:class:`MaskRCNNSettings`) declared once
(:mod:`wingclr.flags`): their parsers and ``outputs.RUN_ONLY["0-segmentation"]`` and
``["0-train-maskrcnn"]`` are built from these classes, which are then passed (frozen) to the
segmentation and Mask R-CNN training modules instead of the argparse Namespace."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..cli import BACKGROUND_HELP, STAGE_DIRS, Settings, parse_rgb
from ..demo import WING_CLASSES
from ..flags import OneOf, flag, run_only
from ..outputs import RUN_ONLY
from .rembg import REMBG_MODELS

METHODS = ("maskrcnn+rembg", "maskrcnn", "rembg", "threshold")  # --method (wingclr/segment/methods.py)
ARCHS = {  # --arch: builder -> torchvision weights enum (its COCO_V1 member is the published file)
    "maskrcnn_resnet50_fpn": "MaskRCNN_ResNet50_FPN_Weights",
    "maskrcnn_resnet50_fpn_v2": "MaskRCNN_ResNet50_FPN_V2_Weights",
}


def _names(text: str) -> list[str]:
    """argparse type of ``--classes``: ``a, b,`` -> ``["a", "b"]``."""
    return [c.strip() for c in text.split(",") if c.strip()]


@dataclass(frozen=True, kw_only=True)
class SegmentSettings(Settings):
    """Every ``segment.py`` flag; the field order is the manifest's "args" order and ``--help``'s."""

    input: Path = flag(Path("photos"), "folder of specimen photos (searched recursively)")
    output: Path = flag(STAGE_DIRS["segmentation"], "output folder")
    method: str | None = flag(None, "segmentation method (see above); if not given: maskrcnn+rembg when the "
                                    "wing checkpoint exists, else rembg", choices=METHODS)
    checkpoint: Path | None = flag(None, "Mask R-CNN checkpoint from train_maskrcnn.py (default: "
                                         "weights/maskrcnn_wings.pth)")
    score_threshold: float = flag(0.5, "ignore Mask R-CNN detections scoring lower; the best one per wing "
                                       "class is kept")
    rembg_model: str | None = flag(None, f"rembg model ({', '.join(REMBG_MODELS)}) whose <name>.onnx is in "
                                         "weights/, or the path of a U^2-Net-style .onnx file (default: "
                                         "u2net; when u2net.onnx is missing, the best installed model, with "
                                         "a note)")
    dilate: float = flag(0.03, "maskrcnn+rembg: how far beyond a Mask R-CNN mask rembg's edge may extend "
                               "the wing, as a fraction of the wings' bounding box")
    min_coverage: float = flag(0.02, "cut-outs covering less of the photo (fraction) are flagged "
                                     "low_coverage and kept out of images/ (0: off)")
    max_coverage: float = flag(0.95, "cut-outs covering more of the photo are flagged high_coverage (1: off)")
    max_side: int = flag(2048, "photos are segmented at most this large (longer side, px); masks are "
                               "scaled back to the full photo")
    background: tuple[int, int, int] = flag((255, 255, 255), BACKGROUND_HELP, type=parse_rgb)
    batch_size: int = flag(1, "photos per Mask R-CNN batch", run_only=True)
    device: str = flag("auto", "auto, cpu or cuda[:i]: Mask R-CNN, and rembg when onnxruntime-gpu is "
                               "installed (manifest.json: model.onnx_provider)", run_only=True)
    num_workers: int = flag(2, "threads that read photos ahead", run_only=True)
    flush_every: int = flag(25, "rewrite segmentation.csv after this many photos (resume granularity)",
                            run_only=True)
    shard: str = flag("auto", "K/N: segment only the K-th of N parts of the sorted photo list (1 <= K <= "
                              "N; parts/ holds each part's table; the last shard to finish merges them into "
                              "the single-process output); auto: the SLURM array task ($SLURM_ARRAY_TASK_ID "
                              "of $SLURM_ARRAY_TASK_COUNT) under an array, else one process; none: one "
                              "process", run_only=True)
    merge: bool = flag(False, "only merge the finished shards' parts in --output (done automatically by the "
                              "last shard)", run_only=True)
    progress: bool = flag(True, "no progress bar", name="--quiet", action="store_false", run_only=True,
                          also=[("--no-progress", {"action": "store_false",  # the old name of --quiet
                                                   "help": argparse.SUPPRESS})])
    overwrite: bool = flag(False, "replace a finished output folder", run_only=True)


@dataclass(frozen=True, kw_only=True)
class MaskRCNNSettings(Settings):
    """Every ``train_maskrcnn.py`` flag; the field order is the manifest's "args" order and ``--help``'s."""

    GROUPS = {None: "", "source": OneOf(required=True)}  # --annotations or --masks

    images: Path = flag(None, "folder of annotated photos", required=True)
    annotations: Path | None = flag(None, "COCO JSON file (file_name relative to --images), or a folder of "
                                          "labelme .json files (classes: --classes, else the labels found, "
                                          "sorted)", group="source")
    masks: Path | None = flag(None, "folder of label-mask PNGs paired with --images", group="source")
    mask_suffix: str = flag("", "text between the image name and .png in mask names")
    classes: tuple[str, ...] | None = flag(None, "comma-separated names of mask labels 1..K (default for "
                                                 f"--masks: {','.join(WING_CLASSES)}; COCO files name their "
                                                 "categories)", type=_names)
    output: Path | None = flag(None, "best checkpoint (default: weights/maskrcnn_wings.pth)")
    work_dir: Path = flag(Path("work/0-maskrcnn"), "metrics.csv, last.pth (resume) and manifest.json")
    arch: str = flag("maskrcnn_resnet50_fpn", "Mask R-CNN variant", choices=list(ARCHS))
    pretrained: str = flag("coco", "start from COCO weights (from weights/, see weights/README.md) or random",
                           choices=["coco", "none"],
                           also=[("--no-pretrained", {"action": "store_const", "const": "none",
                                                      "help": "same as --pretrained none"})])
    init: Path | None = flag(None, "continue from a checkpoint of this script (its classes must match)")
    trainable_backbone_layers: int = flag(3, "ResNet stages trained (0-5); the others stay frozen")
    epochs: int = flag(20, "passes over the training photos")
    max_steps: int = flag(0, "stop after this many steps (0: no limit)")
    batch_size: int = flag(2, "photos per training step")
    lr: float = flag(0.01, "SGD learning rate (cosine decay)")
    warmup_steps: int = flag(200, "linear warm-up steps")
    weight_decay: float = flag(1e-4, "SGD weight decay")
    min_size: int = flag(640, "shorter side the model resizes to")
    max_size: int = flag(1024, "longer side limit of that resize")
    rois_per_image: int = flag(128, "proposals sampled per photo for the box and mask heads")
    scale_jitter: float = flag(0.25, "training sizes vary within min-size x (1 +- jitter)")
    hflip: float = flag(0.5, "horizontal flip probability (swaps left/right)")
    vflip: float = flag(0.0, "vertical flip probability")
    max_side: int = flag(2048, "photos are read downscaled to this side")
    val_fraction: float = flag(0.2, "photos held out for validation")
    score_threshold: float = flag(0.5, "detection score used in validation")
    seed: int = flag(0, "random seed (split, flips, initialisation)")
    device: str = flag("auto", "auto, cpu or cuda[:i]", run_only=True)
    num_workers: int = flag(2, "data loading processes", run_only=True)
    quiet: bool = flag(False, "no line per epoch (the start line and the result stay)", run_only=True)
    overwrite: bool = flag(False, "start again, replacing --output and the work folder's run", run_only=True)


RUN_ONLY["0-segmentation"] = run_only(SegmentSettings)
RUN_ONLY["0-train-maskrcnn"] = run_only(MaskRCNNSettings)
