"""Stage 0's settings: read once from the command line, then passed (frozen) to the segmentation
and Mask R-CNN training modules instead of the argparse Namespace. The defaults live in
``0-segmentation/segment.py`` and ``0-segmentation/train_maskrcnn.py`` only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..cli import Settings


@dataclass(frozen=True, kw_only=True)
class SegmentSettings(Settings):
    """Every ``segment.py`` flag (see ``0-segmentation/segment.py --help`` for what each does)."""

    input: Path
    output: Path
    method: str | None
    checkpoint: Path | None
    score_threshold: float
    rembg_model: str | None
    dilate: float
    min_coverage: float
    max_coverage: float
    max_side: int
    background: tuple[int, int, int]
    batch_size: int
    device: str
    num_workers: int
    flush_every: int
    shard: str
    merge: bool
    progress: bool
    overwrite: bool


@dataclass(frozen=True, kw_only=True)
class MaskRCNNSettings(Settings):
    """Every ``train_maskrcnn.py`` flag (see ``0-segmentation/train_maskrcnn.py --help``)."""

    images: Path
    annotations: Path | None
    masks: Path | None
    mask_suffix: str
    classes: tuple[str, ...] | None
    output: Path | None
    work_dir: Path
    arch: str
    pretrained: str
    init: Path | None
    trainable_backbone_layers: int
    epochs: int
    max_steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    weight_decay: float
    min_size: int
    max_size: int
    rois_per_image: int
    scale_jitter: float
    hflip: float
    vflip: float
    max_side: int
    val_fraction: float
    score_threshold: float
    seed: int
    device: str
    num_workers: int
    quiet: bool
    overwrite: bool
