"""Command-line plumbing shared by every stage script.

Stage scripts call :func:`run` with their parser and ``main``; user-facing problems raise
:class:`UserError`, which is printed as one line (``error: ...``) instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

WORK = Path("work")
STAGE_DIRS = {
    "segmentation": WORK / "0-segmented",
    "clustering": WORK / "1-clusters",
    "dataset": WORK / "2-dataset",
    "training": WORK / "3-training",
    "embedding": WORK / "4-embeddings",
    "evaluation": WORK / "5-evaluation",
}


class UserError(Exception):
    """A problem the user can fix; its message names the file and the fix, on one line."""


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


def run(main: Callable[[argparse.Namespace], object], p: argparse.ArgumentParser,
        argv: Sequence[str] | None = None) -> None:
    """Parse ``argv``, call ``main`` and turn :class:`UserError` into a one-line error, exit 2."""
    args = p.parse_args(argv)
    try:
        main(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; re-run the same command to resume",
              file=sys.stderr)
        sys.exit(130)
