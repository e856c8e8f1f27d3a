"""Every weights file the pipeline knows: where it goes, who uses it, where it is published, and
its checksum (for ``python -m wingclr.weights``, :mod:`wingclr.weights.__main__`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..cli import UserError
from ..segment.rembg import REMBG_CHECKSUMS, REMBG_MODELS, model_path  # noqa: F401 - __main__ uses them
from ..segment.rembg import RELEASES as REMBG_RELEASES
from . import hub_checkpoint_dir, timm_local, weights_dir
from .checksums import verify  # noqa: F401 - __main__ and tests use it from here

WING_CHECKPOINT = "maskrcnn_wings"
# what each stage uses with its default flags (tests/test_offline_weights_and_stage0_1_fallbacks.py
# checks them against the stage parsers): stage 0 rembg model, Mask R-CNN COCO start for train_maskrcnn.py, the wing
# checkpoint (made by the user); stage 1 --backbone; stage 3 --backbone (stage 5's imagenet baseline)
STAGE_NEEDS = {0: ("u2net", "maskrcnn_resnet50_fpn", WING_CHECKPOINT), 1: ("vgg16",),
               2: (), 3: ("resnet50",), 4: (), 5: ("resnet50",)}


@dataclass(frozen=True)
class Entry:
    """One weights file.

    Attributes:
        key: what the user names it by (backbone, rembg model, Mask R-CNN arch or file name).
        file: path inside the weights folder.
        used_by: which stage and flag reads it.
        url: where it is published (None: Hugging Face, or made by the user).
        checksum: ``sha256:<hex prefix>`` or ``md5:<hex>``, when known.
        hf_hub_id: Hugging Face repository (timm backbones).
        howto: how to get a file nobody publishes.
    """

    key: str
    file: str
    used_by: str
    url: str | None = None
    checksum: str | None = None
    hf_hub_id: str | None = None
    howto: str = ""

    @property
    def target(self) -> Path:
        return weights_dir() / self.file

    def local(self) -> Path | None:
        """Where the file already is on this machine, or None."""
        if self.hf_hub_id is not None or self.key.startswith("timm/"):
            from ..models import timm_cfg

            return timm_local(self.key, timm_cfg(self.key))
        if self.key in REMBG_CHECKSUMS:

            try:
                return model_path(self.key)
            except UserError:
                return None
        for path in (self.target, hub_checkpoint_dir() / self.file):
            if path.is_file():
                return path
        return None


def torchvision_entry(name: str) -> Entry:
    import torchvision.models as tvm

    from ..models import BACKBONES

    enum_name, member = BACKBONES[name].weights.split(".")
    url = getattr(getattr(tvm, enum_name), member).url
    return url_entry(name, url, f"stages 1, 3, 5 --backbone {name} (ImageNet)")


def maskrcnn_entry(arch: str) -> Entry:
    from ..segment.maskrcnn import coco_weights

    return url_entry(arch, coco_weights(arch).url, f"train_maskrcnn.py --arch {arch} --pretrained coco")


def url_entry(key: str, url: str, used_by: str) -> Entry:
    file = url.rsplit("/", 1)[-1]
    prefix = file.rsplit(".", 1)[0].rsplit("-", 1)[-1]  # torchvision: <name>-<sha256 prefix>.pth
    return Entry(key, file, used_by, url, f"sha256:{prefix}")


def rembg_entry(name: str) -> Entry:
    return Entry(name, f"{name}.onnx", f"segment.py --rembg-model {name}",
                 REMBG_RELEASES + REMBG_MODELS[name], REMBG_CHECKSUMS.get(name))


def timm_entry(name: str) -> Entry:
    from ..models import timm_arch, timm_cfg

    cfg = timm_cfg(name)
    return Entry(name, f"timm/{timm_arch(name)}.safetensors", f"--backbone {name}",
                 hf_hub_id=getattr(cfg, "hf_hub_id", None) or None)


def wing_entry() -> Entry:
    return Entry(WING_CHECKPOINT, "maskrcnn_wings.pth", "segment.py per-wing masks (optional)",
                 howto="your own: annotate wings and run 0-segmentation/train_maskrcnn.py")


def entry(name: str) -> Entry:
    """The :class:`Entry` of a backbone, rembg model, Mask R-CNN arch or published file name.

    Raises:
        UserError: nothing of that name is known.
    """
    from ..models import BACKBONES
    from ..segment.maskrcnn import ARCHS

    if name.startswith("timm/"):
        return timm_entry(name)
    if name in BACKBONES:
        return torchvision_entry(name)
    if name in REMBG_MODELS:
        return rembg_entry(name)
    if name in ARCHS:
        return maskrcnn_entry(name)
    if name in (WING_CHECKPOINT, "maskrcnn_wings.pth"):
        return wing_entry()
    for known in known_names():
        e = entry(known)
        if name in (e.file, Path(e.file).name) or (e.url and e.url.endswith("/" + name)):
            return e
    raise UserError(f"unknown weights {name!r}: give a backbone ({', '.join(BACKBONES)}, "
                    f"timm/<model>), a rembg model ({', '.join(REMBG_MODELS)}), a Mask R-CNN arch "
                    f"({', '.join(ARCHS)}) or a file name listed by `python -m wingclr.weights check`")


def known_names() -> list[str]:
    """Every file this project knows by name (check lists them)."""
    from ..models import BACKBONES
    from ..segment.maskrcnn import ARCHS

    return [*BACKBONES, *ARCHS, *REMBG_MODELS, "timm/efficientnet_lite0", WING_CHECKPOINT]
