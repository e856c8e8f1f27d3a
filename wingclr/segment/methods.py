"""The four segmentation methods of stage 0 behind one interface.

* ``maskrcnn+rembg`` (default): Mask R-CNN finds the wings (best instance per class); rembg removes
  the background of the whole photo (wings, body, antennae); the wing mask is rembg's foreground
  restricted to the dilated Mask R-CNN masks, every pixel going to its (nearest) wing. Wing edges
  follow rembg's clean edge while the body, which no wing mask covers, stays out.
* ``maskrcnn``: the Mask R-CNN masks alone.
* ``rembg``: rembg's foreground, the whole specimen (label 1 = ``specimen``).
* ``threshold``: classical OpenCV foreground on plain backgrounds, no weights (label 1 = specimen).

Without ``--method`` the default is ``maskrcnn+rembg`` when a wing checkpoint exists, else ``rembg``
(whole specimens): a new user has no wing model until they annotate and train one
(:func:`choose_method`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cli import UserError
from ..weights import fetch_advice, instead, weights_dir
from .masks import (Instance, instances_to_fg, instances_to_owner, remove_specks)
from .rembg import foreground, installed_rembg_models, load_session, model_path, onnx_providers
from .settings import METHODS  # noqa: F401  (declared with --method)
from .threshold import threshold_foreground

DEFAULT_METHOD = "maskrcnn+rembg"
WHOLE_SPECIMEN = ("specimen",)


@dataclass
class Result:
    """One image's segmentation at the inference resolution (see ``segmentation_masks``).

    Attributes:
        owner: ``(h, w)`` uint8 label each pixel takes if it is foreground.
        fg: ``(h, w)`` uint8 soft foreground (>= 128 is foreground).
        scores: label -> detection score (Mask R-CNN) or mean foreground confidence (rembg).
    """

    owner: np.ndarray
    fg: np.ndarray
    scores: dict[int, float] = field(default_factory=dict)


def choose_method(method: str | None, checkpoint: Path | None,
                  rembg_model: str) -> tuple[str, Path | None, str]:
    """Resolve ``--method`` (None: not given) to ``(method, checkpoint, note to print)``.

    Raises:
        UserError: the default method has neither a wing checkpoint nor a rembg model; names both
            files, the fetch command and ``--method threshold``.
    """
    if method is not None or checkpoint is not None:
        method = method or DEFAULT_METHOD
        if method.startswith("maskrcnn") and checkpoint is None:
            from .maskrcnn import default_checkpoint

            checkpoint = default_checkpoint()
        return method, checkpoint, ""
    from .maskrcnn import default_checkpoint

    wings = default_checkpoint()
    if wings.is_file():
        return DEFAULT_METHOD, wings, ""
    try:
        model_path(rembg_model)
    except UserError:

        onnx = rembg_model if rembg_model.endswith(".onnx") else f"{rembg_model}.onnx"
        raise UserError(f"the default method needs a wing Mask R-CNN ({wings}) or at least a rembg "
                        f"model ({weights_dir() / onnx}), and neither is there; "
                        f"{instead('--rembg-model', installed_rembg_models(exclude=rembg_model))}"
                        f"{fetch_advice(rembg_model)} and copy it into {weights_dir()}/ "
                        "(whole-specimen cut-outs), train a wing model with "
                        "0-segmentation/train_maskrcnn.py (per-wing masks), or pass "
                        "--method threshold (plain backgrounds, no weights)") from None
    return "rembg", None, (f"no wing Mask R-CNN ({wings}): cutting out whole specimens with rembg "
                           f"({rembg_model}); for per-wing masks annotate some photos and train one "
                           "with 0-segmentation/train_maskrcnn.py")


DEFAULT_REMBG = "u2net"
# when --rembg-model is not given and u2net.onnx is missing: the installed model to use instead,
# best first (ISNet: IoU 0.885 on the Leeds masks, README "Segmentation")
REMBG_PREFERENCE = ("isnet-general-use", "birefnet-general", "birefnet-general-lite", "birefnet-dis",
                    "bria-rmbg", "silueta", "u2netp")


def choose_rembg_model(name: str | None) -> tuple[str, str]:
    """Resolve ``--rembg-model`` (None: not given) to ``(model, note to print and record)``.

    Not given: :data:`DEFAULT_REMBG` when its file is there, else the best installed model (with a
    note), else :data:`DEFAULT_REMBG` (whose missing file is then the error).
    """
    if name is not None:
        return name, ""

    try:
        model_path(DEFAULT_REMBG, alternatives=False)
        return DEFAULT_REMBG, ""
    except UserError:
        pass
    installed = installed_rembg_models()
    if not installed:
        return DEFAULT_REMBG, ""
    ranked = sorted(installed, key=lambda n: REMBG_PREFERENCE.index(n) if n in REMBG_PREFERENCE
                    else len(REMBG_PREFERENCE))
    return ranked[0], (f"--rembg-model not given and the default {DEFAULT_REMBG}.onnx is not in "
                       f"the weights folder: using the installed {ranked[0]} (pass --rembg-model "
                       "to choose)")


def pick_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


class Segmenter:
    """Loads the models a method needs once, then segments batches of images.

    Args:
        method: one of :data:`METHODS`.
        checkpoint: Mask R-CNN checkpoint (Mask R-CNN methods).
        rembg_model: rembg model name or ``.onnx`` path (rembg methods).
        score_threshold: Mask R-CNN detections scoring lower are ignored.
        dilate: how far outside a Mask R-CNN mask rembg's foreground may still belong to the wing,
            as a fraction of the longer side of the wings' bounding box.
        device: ``auto``, ``cpu`` or ``cuda[:i]`` (Mask R-CNN, and rembg through onnxruntime's
            CUDA provider when onnxruntime-gpu is installed).

    Attributes:
        notes: lines to print and record (e.g. rembg left on the CPU).

    Raises:
        UserError: a weights file is missing (raised here, before any image is processed).
    """

    def __init__(self, method: str, checkpoint: Path | None = None, rembg_model: str = "u2net",
                 score_threshold: float = 0.5, dilate: float = 0.03, device: str = "auto"):
        self.method, self.score_threshold, self.dilate = method, score_threshold, dilate
        self.model = self.session = None
        self.classes: tuple[str, ...] = WHOLE_SPECIMEN
        self.info: dict = {"method": method}
        self.notes: list[str] = []
        if method.startswith("maskrcnn"):
            from .maskrcnn import keep_best_per_class, load_checkpoint, set_score_threshold

            model, spec = load_checkpoint(checkpoint)
            self.device = pick_device(device)
            self.model = model.to(self.device)
            set_score_threshold(self.model, score_threshold)
            keep_best_per_class(self.model)
            self.classes = spec.classes
            self.info.update(checkpoint=str(checkpoint), arch=spec.arch)
        if method in ("maskrcnn+rembg", "rembg"):
            import onnxruntime


            providers, note = onnx_providers(device, onnxruntime.get_available_providers())
            self.notes += [note] if note else []
            self.session = load_session(rembg_model, providers=providers)
            self.info["rembg_model"] = rembg_model
            # onnxruntime-gpu installed: CUDAExecutionProvider first, else the CPU
            inner = getattr(self.session, "inner_session", None)
            if inner is not None:
                self.info["onnx_provider"] = inner.get_providers()[0]

    def __call__(self, images: list[np.ndarray]) -> list[Result]:
        """Segment ``(h, w, 3)`` uint8 RGB images (one batch)."""
        if self.model is not None:
            from .maskrcnn import predict

            found = predict(self.model, images, self.device, self.score_threshold)
        else:
            found = [[] for _ in images]
        return [self._one(im, inst) for im, inst in zip(images, found)]

    def _one(self, rgb: np.ndarray, instances: list[Instance]) -> Result:
        shape = rgb.shape[:2]
        if self.method == "threshold":

            return Result(np.ones(shape, np.uint8), threshold_foreground(rgb))
        scores = {inst.label: inst.score for inst in instances}
        if self.method == "rembg":

            fg = foreground(self.session, rgb)
            owner = np.ones(shape, np.uint8)
            kept = fg >= 128
            scores = {1: float(fg[kept].mean() / 255)} if kept.any() else {}
        elif self.method == "maskrcnn":
            owner, fg = instances_to_owner(instances, shape), instances_to_fg(instances, shape)
        else:  # maskrcnn+rembg
            if not instances:
                return Result(np.zeros(shape, np.uint8), np.zeros(shape, np.uint8))
            owner = instances_to_owner(instances, shape, self._dilate_px(instances))

            fg = foreground(self.session, rgb)
        labels = np.where(fg >= 128, owner, 0).astype(np.uint8)
        dropped = (labels > 0) & (remove_specks(labels) == 0)
        owner[dropped] = 0
        return Result(owner, fg, scores)

    def _dilate_px(self, instances: list[Instance]) -> int:
        union = np.max(np.stack([inst.prob for inst in instances]), axis=0) >= 128
        ys, xs = np.nonzero(union)
        if ys.size == 0:
            return 1
        return max(1, round(self.dilate * max(np.ptp(ys) + 1, np.ptp(xs) + 1)))
