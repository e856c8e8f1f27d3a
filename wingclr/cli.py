"""Command-line plumbing shared by every stage script.

Stage scripts call :func:`run` with their parser and ``main``; user-facing problems raise
:class:`UserError`, which is printed as one line (``error: ...``) instead of a traceback. The
``check_*`` helpers hold the flag rules that several stages share.
"""

from __future__ import annotations

import argparse
import errno
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

WORK = Path("work")
STAGE_DIRS = {
    "segmentation": WORK / "0-segmented",
    "clustering": WORK / "1-clusters",
    "dataset": WORK / "2-dataset",
    "training": WORK / "3-training",
    "embedding": WORK / "4-embeddings",
    "evaluation": WORK / "5-evaluation",
}


# Smallest training / feature input side: the backbones downsample 32x, so a smaller input has no
# spatial extent left in the last stage. Every stage with an --input-size checks this one rule.
MIN_INPUT_SIZE = 32


class UserError(Exception):
    """A problem the user can fix; its message names the file and the fix, on one line."""


class Stopped(Exception):
    """A run stopped on a signal after saving its progress; the process exits ``128 + signum``."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def check_minimum(*checks: tuple[str, float | None, float]) -> None:
    """One-line :class:`UserError` for the first ``(flag, value, lowest allowed)`` below its bound.

    ``None`` values (flag not given) pass; NaN never does.
    """
    for flag, value, low in checks:
        if value is not None and not value >= low:
            raise UserError(f"{flag} must be at least {low}, got {value}")


def check_input_size(value: int | None, flag: str = "--input-size") -> None:
    """The shared rule for image sides fed to a backbone (:data:`MIN_INPUT_SIZE`)."""
    check_minimum((flag, value, MIN_INPUT_SIZE))


def check_gpu_request(flag: str, value: str) -> None:
    """Refuse ``--accelerator gpu`` / ``--device cuda`` on a machine where torch sees no GPU."""
    if str(value).split(":")[0] not in ("gpu", "cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"{flag} {value} but torch sees no GPU (no CUDA device or driver; check "
                        f"CUDA_VISIBLE_DEVICES); pass {flag} auto to use the CPU")


def require_output_folder(path: Path, flag: str = "--output") -> None:
    """One-line :class:`UserError` when ``path`` (or a folder above it) is a file, not a folder."""
    for p in (Path(path), *Path(path).parents):
        if p.exists():
            if not p.is_dir():
                raise UserError(f"{flag} {path}: {p} is a file, not a folder; pass a folder "
                                "(it is created when missing)")
            return


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the docstring's copy-paste commands as written."""


def require_folder(path: Path, what: str, fix: str) -> None:
    """One-line :class:`UserError` unless ``path`` is an existing folder.

    Args:
        what: e.g. ``"input folder"``; ``fix``: what to do when the folder does not exist.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, expected a folder; pass the folder that holds "
                        f"it (e.g. {path.parent}) instead")
    if not path.is_dir():
        raise UserError(f"{what} {path} does not exist; {fix}")


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser whose description is the stage script's docstring."""
    return argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)


def add_pretrained_args(p: argparse.ArgumentParser, default: str = "imagenet") -> None:
    """``--pretrained imagenet|none`` plus the ``--no-pretrained`` shortcut."""
    p.add_argument("--pretrained", choices=["imagenet", "none"], default=default,
                   help="start from ImageNet weights (looked up in weights/, see weights/README.md) "
                        "or random initialisation")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_const", const="none",
                   help="same as --pretrained none (random initialisation)")


def add_background_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--background", type=parse_rgb, default=(255, 255, 255),
                   help="R,G,B colour that transparent pixels (RGBA) are composited on")


def parse_rgb(text: str | Sequence[int]) -> tuple[int, int, int]:
    """'255,255,255' -> (255, 255, 255)."""
    if not isinstance(text, str):
        return tuple(int(v) for v in text)  # type: ignore[return-value]
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise argparse.ArgumentTypeError(f"expected R,G,B with values 0-255, got {text!r}")
    return values  # type: ignore[return-value]


# Failures of the file system, not of the program: one line naming the file instead of a traceback.
WRITE_ERRORS = {
    errno.ENOSPC: "free disk space or choose another --output",
    errno.EDQUOT: "free space within your quota or choose another --output",
    errno.EROFS: "the file system is read-only: choose a writable --output",
    errno.EACCES: "check its permissions or choose another --output",
    errno.EPERM: "check its permissions or choose another --output",
}


def write_error(path: Path | str, e: OSError, writing: bool = True) -> UserError | None:
    """A one-line :class:`UserError` for a disk-full / read-only / permission failure on
    ``path`` (``writing``: while writing it), or None when ``e`` is another kind of error."""
    hint = WRITE_ERRORS.get(e.errno)
    if hint is None:
        return None
    what = f"cannot write {path}" if writing else str(path)
    return UserError(f"{what} ({e.strerror}); {hint}, then re-run the same command (finished "
                     "outputs are kept)")


@contextmanager
def write_errors(path: Path | str) -> Iterator[None]:
    """Inside the block, a disk-full / read-only / permission ``OSError`` becomes the one-line
    :func:`write_error` naming ``path``; other errors pass unchanged."""
    try:
        yield
    except OSError as e:
        error = write_error(path, e)
        if error is None:
            raise
        raise error from None


def run(main: Callable[[argparse.Namespace], object], p: argparse.ArgumentParser,
        argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` and call ``main``.

    :class:`UserError` and file-system failures (:data:`WRITE_ERRORS`) print one ``error:`` line
    and exit 2; :class:`Stopped` exits ``128 + signal``; Ctrl-C exits 130.
    """
    args = p.parse_args(argv)
    try:
        main(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Stopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except OSError as e:
        error = write_error(e.filename or "a file", e, writing=False)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; re-run the same command to resume",
              file=sys.stderr)
        sys.exit(130)
