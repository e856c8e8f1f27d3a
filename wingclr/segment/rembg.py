"""rembg background removal with model files from ``weights/`` only (never a download).

rembg looks for ``<home>/models/<name>/<name>.onnx`` then ``<home>/<name>.onnx`` with
``<home> = $U2NET_HOME``; we point ``U2NET_HOME`` at the weights folder while the session is
created, after checking that the file is there (otherwise rembg would try to download it).
``--rembg-model`` may also be a path to an ``.onnx`` file with U^2-Net's interface (loaded through
rembg's ``u2net_custom`` session), e.g. a U^2-Net fine-tuned on your specimens.

``import rembg`` is slow the first time in a fresh environment (~70 s, numba compiles), so it is
imported only when a session is created.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from ..cli import UserError
from ..weights import fetch_advice, instead, weights_dir
from ..weights.checksums import require_checksum

RELEASES = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/"
# rembg model name -> published file (saved by `rembg d <name>` as <name>.onnx)
REMBG_MODELS = {
    "u2net": "u2net.onnx",
    "u2netp": "u2netp.onnx",
    "silueta": "silueta.onnx",
    "isnet-general-use": "isnet-general-use.onnx",
    "birefnet-general": "BiRefNet-general-epoch_244.onnx",
    "birefnet-general-lite": "BiRefNet-general-bb_swin_v1_tiny-epoch_232.onnx",
    "birefnet-dis": "BiRefNet-DIS-epoch_590.onnx",
    "bria-rmbg": "bria-rmbg-2.0.onnx",
}

# published checksums of rembg's release files (from rembg's own session classes)
REMBG_CHECKSUMS = {
    "u2net": "md5:60024c5c889badc19c04ad937298a77b",
    "u2netp": "md5:8e83ca70e441ab06c318d82300c84806",
    "silueta": "md5:55e59e0d8062d2f5d013f4725ee84782",
    "isnet-general-use": "md5:fc16ebd8b0c10d971d3513d564d01e29",
    "birefnet-general": "md5:7a35a0141cbbc80de11d9c9a28f52697",
    "birefnet-general-lite": "md5:4fab47adc4ff364be1713e97b7e66334",
    "birefnet-dis": "md5:2d4d44102b446f33a4ebb2e56c051f2b",
    "bria-rmbg": "sha256:5b486f08200f513f460da46dd701db5fbb47d79b4be4b708a19444bcd4e79958",
}


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def model_path(name: str, home: Path | None = None, *, alternatives: bool = True) -> Path:
    """Where the rembg model ``name`` (or an ``.onnx`` path) lies.

    Args:
        name: a key of :data:`REMBG_MODELS` or the path of an ``.onnx`` file.
        home: the weights folder (default :func:`~wingclr.weights.weights_dir`).
        alternatives: name the installed models' flags in the error.

    Raises:
        UserError: the file is missing; the message names the installed models' flags first,
            then how to get the file.
    """
    if name.endswith(".onnx"):
        path = Path(name)
        for candidate in (path, (home or weights_dir()) / path):
            if candidate.is_file():
                return candidate.resolve()
        raise UserError(f"rembg model file {name} not found (nor in {home or weights_dir()}/); "
                        "give the path of an existing U^2-Net-style .onnx file")
    if name not in REMBG_MODELS:
        raise UserError(f"unknown --rembg-model {name}; choose one of {', '.join(REMBG_MODELS)} "
                        "or give the path of an .onnx file")
    home = Path(home or weights_dir())
    for candidate in (home / "models" / name / f"{name}.onnx", home / f"{name}.onnx"):
        if candidate.is_file():
            return candidate
    installed = instead("--rembg-model", installed_rembg_models(exclude=name)) if alternatives else ""
    raise UserError(f"rembg model file {name}.onnx not found in {home}/; {installed}{fetch_advice(name)} "
                    f"(or download {RELEASES}{REMBG_MODELS[name]}; `rembg d {name}` needs "
                    f"pip install \"rembg[cli]\") and copy the file into {home}/ as {name}.onnx, "
                    "or use --method threshold|maskrcnn which need no rembg model")


CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
GPU_ADVICE = "pip uninstall -y onnxruntime && pip install onnxruntime-gpu"


def onnx_providers(device: str, available) -> tuple[list | None, str]:
    """onnxruntime providers for ``--device`` and a note when a GPU was asked for in vain.

    Args:
        device: ``auto`` (rembg's own choice: CUDA when onnxruntime-gpu is installed and sees a
            GPU), ``cpu`` or ``cuda[:i]``.
        available: ``onnxruntime.get_available_providers()``.

    Returns:
        ``(providers or None for rembg's choice, note)``.
    """
    if device == "cpu":
        return [CPU], ""
    if device.startswith("cuda"):
        if CUDA not in available:
            return [CPU], (f"rembg runs on the CPU: onnxruntime has no CUDA provider here "
                           f"({GPU_ADVICE} to use the GPU)")
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        return [(CUDA, {"device_id": index}), CPU], ""
    return None, ""


def load_session(name: str, home: Path | None = None, providers: list | None = None):
    """A rembg session for model ``name`` whose file is taken from ``home`` (default weights/).

    Args:
        providers: onnxruntime providers (:func:`onnx_providers`); None: rembg's choice.

    Returns:
        rembg ``BaseSession``; pass it to :func:`foreground`.
    """
    path = model_path(name, home)
    if not name.endswith(".onnx"):  # a published model: its file must be the published one
        require_checksum(path, REMBG_CHECKSUMS.get(name), name)
    import rembg

    extra = {} if providers is None else {"providers": providers}
    if name.endswith(".onnx"):
        with _env(U2NET_HOME=str(path.parent)):
            return rembg.new_session("u2net_custom", model_path=str(path), **extra)
    with _env(U2NET_HOME=str(path.parent if path.parent.name != name else path.parents[2])):
        return rembg.new_session(name, **extra)


def foreground(session, rgb: np.ndarray) -> np.ndarray:
    """rembg's foreground (alpha) for a photo.

    Args:
        session: from :func:`load_session`.
        rgb: ``(H, W, 3)`` uint8.

    Returns:
        ``(H, W)`` uint8 soft mask, 255 = foreground.
    """
    from PIL import Image
    from rembg import remove

    mask = remove(Image.fromarray(rgb), session=session, only_mask=True)
    out = np.asarray(mask.convert("L"), np.uint8)
    if out.shape != rgb.shape[:2]:  # sessions resize back to the input size; be safe anyway
        import cv2

        out = cv2.resize(out, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    return out


def installed_rembg_models(*, exclude: str = "") -> list[str]:
    """``--rembg-model`` names whose ``.onnx`` file is in the weights folder."""
    found = []
    for name in REMBG_MODELS:
        try:
            model_path(name, alternatives=False)
            found.append(name)
        except UserError:
            pass
    return [n for n in found if n != exclude]
