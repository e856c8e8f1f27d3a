"""torchvision Mask R-CNN for wings: building, checkpoints and per-class inference.

A checkpoint is a dict saved with ``torch.save`` (loadable with ``weights_only=True``)::

    {"format": "wingclr-maskrcnn", "model": state_dict, "classes": ["forewing_left", ...],
     "arch": "maskrcnn_resnet50_fpn" | "maskrcnn_resnet50_fpn_v2", "min_size": int,
     "max_size": int, "frozen_bn": bool, "epoch": int, "metrics": {...}}

Label ``k`` of the model (1..K) is ``classes[k - 1]``; 0 is the background. Models are always built
with ``weights=None, weights_backbone=None`` (torchvision would otherwise download); COCO weights
come from ``wingclr.weights``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..cli import UserError
from ..outputs import atomic_path
from ..untrusted import load_torch
from ..weights import instead, torchvision_state_dict, weights_dir
from .masks import Instance
from .rembg import installed_rembg_models
from .settings import ARCHS  # noqa: F401  (declared with --arch; catalog.py reads it here)

FORMAT = "wingclr-maskrcnn"
DEFAULT_CHECKPOINT = "maskrcnn_wings.pth"
BACKBONE_LAYERS = ("layer4", "layer3", "layer2", "layer1", "conv1")


@dataclass(frozen=True)
class ModelSpec:
    """What it takes to rebuild a model for a state dict."""

    classes: tuple[str, ...]
    arch: str = "maskrcnn_resnet50_fpn"
    min_size: int = 640
    max_size: int = 1024
    frozen_bn: bool = False


def coco_weights(arch: str):
    """The torchvision COCO weights enum member of ``arch`` (``.url`` names the file)."""
    from torchvision.models import detection

    return getattr(detection, ARCHS[arch]).COCO_V1


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` by a ``FrozenBatchNorm2d`` with its statistics.

    Fine-tuning runs on batches of 1-4 images, too few for batch statistics.
    """
    from torchvision.ops import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def set_trainable_layers(model: nn.Module, n: int) -> None:
    """Train only the last ``n`` (0-5) ResNet stages of the backbone, as torchvision does."""
    if not 0 <= n <= 5:
        raise UserError(f"--trainable-backbone-layers must be 0-5, got {n}")
    train = list(BACKBONE_LAYERS[:n]) + (["bn1"] if n == 5 else [])
    for name, param in model.backbone.body.named_parameters():
        param.requires_grad_(any(name.startswith(layer) for layer in train))


def build_model(spec: ModelSpec, pretrained: str = "none", trainable_layers: int = 5) -> nn.Module:
    """Mask R-CNN with ``len(spec.classes) + 1`` outputs.

    Args:
        spec: architecture, classes and input sizes.
        pretrained: ``"coco"`` loads the COCO weights (file from ``wingclr.weights``) into every
            layer except the class-specific box and mask predictors, which start fresh.
        trainable_layers: backbone stages that are trained (the rest are frozen).

    Raises:
        UserError: unknown architecture, or the COCO weights file is missing or wrong.
    """
    from torchvision.models import detection

    if spec.arch not in ARCHS:
        raise UserError(f"unknown Mask R-CNN architecture {spec.arch}; choose {' or '.join(ARCHS)}")
    model = getattr(detection, spec.arch)(weights=None, weights_backbone=None,
                                          num_classes=len(spec.classes) + 1,
                                          min_size=spec.min_size, max_size=spec.max_size)
    if pretrained == "coco":
        _load_coco(model, spec.arch)
    if spec.frozen_bn:
        freeze_batchnorm(model.backbone.body)
    set_trainable_layers(model, trainable_layers)
    return model


def _load_coco(model: nn.Module, arch: str) -> None:
    weights = coco_weights(arch)
    state = torchvision_state_dict(weights, hint="or pass --pretrained none to start from "
                                                 "random weights")
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    fresh = [k for k in own if k not in fits and not k.endswith("num_batches_tracked")]
    if any(not k.startswith(("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits"))
           for k in fresh):
        name = weights.url.rsplit("/", 1)[-1]
        raise UserError(f"{name} does not hold {arch} weights ({len(fresh)} layers do not fit); "
                        "replace it with the file from " + weights.url)
    model.load_state_dict(fits, strict=False)


def save_checkpoint(path: Path | str, model: nn.Module, spec: ModelSpec, **extra) -> None:
    """Write a checkpoint (atomically) that :func:`load_checkpoint` and segment.py read."""
    state = {"format": FORMAT, "model": model.state_dict(), **asdict(spec), **extra}
    state["classes"] = list(spec.classes)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def default_checkpoint() -> Path:
    return weights_dir() / DEFAULT_CHECKPOINT


def read_checkpoint(path: Path | str) -> dict:
    """Load a checkpoint dict on the CPU, checking that it is one of ours.

    Raises:
        UserError: missing file, unreadable file, or not a wingclr Mask R-CNN checkpoint.
    """
    path = Path(path)
    if not path.is_file():

        installed = instead("--method rembg --rembg-model", installed_rembg_models())
        raise UserError(f"Mask R-CNN checkpoint {path} not found; {installed}train one with "
                        "0-segmentation/train_maskrcnn.py, pass --checkpoint, or use "
                        "--method threshold (or rembg), which needs no Mask R-CNN")
    ckpt = load_torch(path, what="Mask R-CNN checkpoint",
                      fix="train one again with 0-segmentation/train_maskrcnn.py")
    if not isinstance(ckpt, dict) or "model" not in ckpt or not ckpt.get("classes"):
        raise UserError(f"{path} is not a wingclr Mask R-CNN checkpoint (it needs 'model' and "
                        "'classes'); train one with 0-segmentation/train_maskrcnn.py")
    return ckpt


def spec_of(ckpt: dict) -> ModelSpec:
    return ModelSpec(tuple(ckpt["classes"]), ckpt.get("arch", "maskrcnn_resnet50_fpn"),
                     int(ckpt.get("min_size", 800)), int(ckpt.get("max_size", 1333)),
                     bool(ckpt.get("frozen_bn", False)))


def load_checkpoint(path: Path | str) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model of a checkpoint with its weights (on the CPU, in eval mode)."""
    ckpt = read_checkpoint(path)
    spec = spec_of(ckpt)
    model = build_model(spec)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        detail = lines[1].strip() if len(lines) > 1 else lines[0]
        raise UserError(f"{path}: weights do not fit a {spec.arch} with {len(spec.classes)} "
                        f"classes ({detail})") from None
    return model.eval(), spec


def set_score_threshold(model: nn.Module, score_threshold: float) -> None:
    """Let detections down to ``score_threshold`` through the box head (its default is 0.05)."""
    model.roi_heads.score_thresh = min(0.05, score_threshold)


def keep_best_per_class(model: nn.Module) -> nn.Module:
    """Make inference keep only the top detection of each class *before* the mask head.

    The mask head costs ~0.5 GFLOP per detection; with a low ``--score-threshold`` it would run on
    up to 100 detections per photo of which :func:`best_per_class` keeps at most K.
    """
    heads = model.roi_heads
    original = type(heads).postprocess_detections.__get__(heads)

    def postprocess(*args, **kwargs):
        boxes, scores, labels = original(*args, **kwargs)
        for i, lab in enumerate(labels):
            first: dict[int, int] = {}
            for j, value in enumerate(lab.tolist()):  # sorted by score: first = best
                first.setdefault(value, j)
            idx = torch.tensor(sorted(first.values()), dtype=torch.long, device=lab.device)
            boxes[i], scores[i], labels[i] = boxes[i][idx], scores[i][idx], lab[idx]
        return boxes, scores, labels

    heads.postprocess_detections = postprocess
    return model


@torch.inference_mode()
def predict(model: nn.Module, images: list[np.ndarray], device: torch.device | str = "cpu",
            score_threshold: float = 0.5) -> list[list[Instance]]:
    """Best instance per class above ``score_threshold`` for each image.

    Args:
        model: Mask R-CNN in eval mode, on ``device``.
        images: ``(h, w, 3)`` uint8 RGB arrays (sizes may differ).
        device: where ``model`` lives.
        score_threshold: detections scoring lower are ignored.

    Returns:
        Per image, the kept instances (``prob`` at the image's size), ordered by label.
    """
    tensors = [torch.from_numpy(im.copy()).to(device).permute(2, 0, 1).float() / 255
               for im in images]
    outputs = model(tensors)
    return [best_per_class(out, score_threshold) for out in outputs]


def best_per_class(output: dict, score_threshold: float) -> list[Instance]:
    """Keep the highest-scoring detection of each label (torchvision output dict, one image)."""
    scores, labels = output["scores"].cpu(), output["labels"].cpu()
    kept = []
    for label in sorted(set(labels.tolist())):
        idx = torch.nonzero(labels == label).flatten()
        best = idx[scores[idx].argmax()]
        if scores[best] >= score_threshold:
            prob = (output["masks"][best, 0] * 255).round().to(torch.uint8).cpu().numpy()
            kept.append(Instance(int(label), float(scores[best]), prob))
    return kept
