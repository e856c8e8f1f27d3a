"""Stage 3 checkpoints read back: by stage 3 (resume, rebuild), stage 4 and stage 5.

Deliberately free of PyTorch Lightning, so embedding a run (stage 4) imports only torch and the
backbone factory. A checkpoint is a torch zip file whose ``"wingclr"`` entry holds the model
metadata (backbone, channels, input size, normalisation) and whose ``state_dict`` holds
``backbone.*`` and ``projection_head.*`` weights; nothing in it names a wingclr class, so
moving modules never breaks old checkpoints (``tests/test_checkpoints.py``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from ..cli import UserError
from ..models import build_backbone
from ..outputs import MANIFEST, read_manifest
from ..untrusted import load_torch


def read_checkpoint(path: Path) -> dict:
    """A stage 3 checkpoint as a dict; a missing or damaged file is a one-line error saying how to
    get it back (:func:`rebuild_hint`), one that pickles code is refused without running it
    (:func:`wingclr.untrusted.load_torch`)."""
    try:
        ckpt = load_torch(path, what="checkpoint", fix=lambda: rebuild_hint(Path(path)))
    except FileNotFoundError:
        if (Path(path).parent / MANIFEST).is_file():  # a finished run lost its checkpoint
            raise UserError(f"checkpoint {path} does not exist; {rebuild_hint(Path(path))}") from None
        raise UserError(f"checkpoint {path} does not exist; check the path (runs live in "
                        "work/3-training/<run>/)") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path} is not a wingclr SimCLR checkpoint (it holds a "
                        f"{type(ckpt).__name__}, not a dict); {rebuild_hint(Path(path))}")
    return ckpt


def checkpoint_damage(path: Path, size: int | None = None) -> str:
    """What is wrong with a finished run's checkpoint ('' when it looks whole).

    Cheap: the file must exist, have the size the manifest recorded and end in a complete zip
    directory (torch checkpoints are zip files; a truncated one lacks it).
    """
    if not path.is_file():
        return "is missing"
    if size is not None and path.stat().st_size != size:
        return f"has {path.stat().st_size} bytes where {size} were written (truncated or replaced)"
    if not zipfile.is_zipfile(path):
        return "is damaged (not a complete torch checkpoint)"
    return ""


def rebuild_hint(ckpt: Path) -> str:
    """How to get a damaged or missing checkpoint of a stage 3 run back."""
    manifest = read_manifest(ckpt.parent) if (ckpt.parent / MANIFEST).is_file() else None
    if not manifest or manifest.get("stage") != "3-training":
        return ("delete it and re-run the stage 3 command that trained it (a run resumes from "
                "last.ckpt or starts again)")
    command = manifest.get("command", "")
    if command.startswith("train.py"):  # manifests written before the full command was kept
        command = f"python 3-training/{command}"
    if not any(word.endswith("train.py") for word in command.split()[:2]):
        command = f"python 3-training/train.py with the flags recorded in {ckpt.parent / MANIFEST}"
    if checkpoint_damage(ckpt.parent / "last.ckpt"):  # removed when the run finished
        return (f"train the run again: re-run the stage 3 command that trained it with --overwrite "
                f"({command}, plus --overwrite)")
    return (f"re-run the stage 3 command that trained it ({command}): it notices a missing or "
            "damaged checkpoint and rebuilds it from last.ckpt")


def load_backbone(ckpt_path: Path) -> tuple[torch.nn.Module, dict]:
    """Backbone (projection head dropped) and its ``wingclr`` metadata from a stage 3 checkpoint."""
    ckpt = read_checkpoint(ckpt_path)
    meta = ckpt.get("wingclr")
    if not meta or not isinstance(meta, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(f"{ckpt_path} is not a wingclr SimCLR checkpoint (no model metadata)")
    backbone, _ = build_backbone(meta["backbone"], False, meta["in_chans"], meta["rgb_bands"],
                                 meta["input_size"])
    state = {k[len("backbone."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    misfit = weights_misfit(backbone.state_dict(), state)
    if misfit:
        raise UserError(f"{ckpt_path}: its metadata says backbone {meta['backbone']} with "
                        f"{meta['in_chans']} channels, but its weights {misfit}; the metadata or "
                        "the weights were changed, so re-train the run or use the original file")
    backbone.load_state_dict(state)
    return backbone.eval(), meta


def weights_misfit(expected: dict, state: dict) -> str:
    """How checkpoint weights ``state`` differ from a model's ``expected`` ones ('' when they fit)."""
    first = next((k for k, v in state.items() if v.ndim == 4), None)  # the first convolution
    seen = f" (their first layer {first} takes {state[first].shape[1]} channels)" if first else ""
    for key, want in expected.items():
        if key in state and state[key].shape != want.shape:
            return (f"have {key} of shape {list(state[key].shape)} where that model has "
                    f"{list(want.shape)}{seen}")
    missing, extra = set(expected) - set(state), set(state) - set(expected)
    if missing or extra:
        return (f"lack {len(missing)} and add {len(extra)} of that model's tensors (e.g. "
                f"{sorted(missing or extra)[0]}){seen}")
    return ""
