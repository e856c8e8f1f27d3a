"""Command-line plumbing shared by every stage script.

Stage scripts call :func:`run` with their parser and ``main``; user-facing problems raise
:class:`UserError`, which is printed as one line (``error: ...``) instead of a traceback. The
``check_*`` helpers hold the flag rules that several stages share.
"""

from __future__ import annotations

import argparse
import errno
import logging
import re
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

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


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``scancel``) as an exception: a stage stops as on Ctrl-C (``finally``
    blocks flush what is done, temporary files are removed) and says what it kept."""

    signum = signal.SIGTERM


def _terminate(signum, frame) -> None:
    raise Terminated()


_saved_so_far = ""  # what the running stage has kept so far, said when a signal stops it


def saved_so_far(note: str) -> None:
    """Tell :func:`run` what the stage has saved so far (said if SIGTERM or Ctrl-C stops it),
    e.g. ``"segmentation.csv lists the 120 photos done"``."""
    global _saved_so_far
    _saved_so_far = note


def stop_message(signum: int) -> str:
    """The line a stage stopped by ``signum`` prints (before its resume hint)."""
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    return (f"stopped by {name}: {_saved_so_far or 'finished outputs are kept'}; "
            "re-run the same command to resume")


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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the docstring's copy-paste commands as written and shows each option's default once.

    ``(default: X)`` is added to an option's help unless the help already says what its default
    is (it mentions "default"), the default is None (decided at run time: the help says how),
    suppressed or empty, or the option is an on/off switch (``store_true`` and the like).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.nargs == 0 or default is None or default is argparse.SUPPRESS
                or isinstance(default, bool) or default in ("", [], ())
                or re.search(r"\bdefault", text, re.IGNORECASE)):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


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


@dataclass(frozen=True, kw_only=True)
class Settings:
    """A stage's flags, read once from the command line and passed (frozen) to its modules, in
    place of the argparse Namespace. A stage subclasses it with one field per flag: either declared
    with :func:`wingclr.flags.flag` (default, help, section: the parser is built from the class,
    as stage 3's), or plain fields whose defaults live in the stage script's parser.

    Attributes:
        given: the flags typed on the command line among those stored with :class:`Given` (a
            typed value that equals the default still counts, e.g. ``--batch-size 256`` with
            ``--param-i`` fixes that grid axis). Not a setting: never recorded in a manifest.
    """

    given: frozenset[str] = field(default=frozenset(), repr=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **changes):
        """From the stage script's parsed arguments; lists become tuples (the settings are frozen)
        and ``changes`` replace flags' values (e.g. one resolved from another flag).

        Raises:
            TypeError: the parser and the class disagree on the flags (a flag added to one only).
        """
        names = [f.name for f in fields(cls) if f.name != "given"]
        values = {k: v for k, v in vars(args).items() if k != "given"}
        if set(values) != set(names):
            raise TypeError(f"{cls.__name__} and the parser differ: only in the parser "
                            f"{sorted(set(values) - set(names))}, only in the class "
                            f"{sorted(set(names) - set(values))}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in {**values, **changes}.items()}
        return cls(**values, given=frozenset(getattr(args, "given", ())))

    def as_dict(self) -> dict:
        """The settings in flag order (``given`` left out): what a manifest records."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "given"}


class Given(argparse.Action):
    """``store``, and add the flag's dest to ``namespace.given`` (see :attr:`Settings.given`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = frozenset(getattr(namespace, "given", ())) | {self.dest}


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser whose description is the stage script's docstring."""
    return argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)


# Flags several stages share: their help (and the --no-pretrained shortcut) in one place, for the
# add_* helpers below and for stage 3's declaration (wingclr/train/settings.py).
PRETRAINED_HELP = ("start from ImageNet weights (looked up in weights/, see weights/README.md) "
                   "or random initialisation")
NO_PRETRAINED = ("--no-pretrained", {"action": "store_const", "const": "none",
                                     "help": "same as --pretrained none (random initialisation)"})
BACKGROUND_HELP = "R,G,B colour that transparent pixels (RGBA) are composited on"


def add_pretrained_args(p: argparse.ArgumentParser, default: str = "imagenet") -> None:
    """``--pretrained imagenet|none`` plus the ``--no-pretrained`` shortcut."""
    p.add_argument("--pretrained", choices=["imagenet", "none"], default=default, help=PRETRAINED_HELP)
    p.add_argument(NO_PRETRAINED[0], dest="pretrained", **NO_PRETRAINED[1])


def add_background_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--background", type=parse_rgb, default=(255, 255, 255), help=BACKGROUND_HELP)


def add_quiet_arg(p: argparse.ArgumentParser, help: str = "no progress bar",
                  dest: str = "quiet") -> None:
    """``--quiet``, the one name every stage uses for less output.

    ``dest="progress"`` stores False instead of True (for code that reads ``args.progress``).
    """
    p.add_argument("--quiet", dest=dest, action="store_false" if dest == "progress" else "store_true",
                   help=help)


# Third-party packages whose deprecation notices are for their own developers, not for users.
NOISY_PACKAGES = ("torch", "torchvision", "timm", "pytorch_lightning", "lightning_fabric",
                  "lightning", "lightning_utilities", "lightly", "kornia", "umap", "pynndescent",
                  "numba", "sklearn", "hdbscan", "rembg", "pymatting", "onnxruntime", "huggingface_hub")
# Loggers that print banners and adverts at INFO ("GPU available: ...", "💡 Tip: ... litlogger").
NOISY_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                 "lightning_fabric.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


def quiet_libraries() -> None:
    """Silence third-party noise: deprecation warnings raised inside :data:`NOISY_PACKAGES` and the
    INFO banners / adverts of :data:`NOISY_LOGGERS`. Warnings of wingclr itself, and anything a
    library raises above deprecation level, still show. ``python -W ...`` or ``PYTHONWARNINGS``
    turns the filters off (the user asked for warnings explicitly)."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if sys.warnoptions:
        return
    for name in NOISY_PACKAGES:
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category, module=rf"{name}(\.|$)")


T = TypeVar("T")


def stdout_is_terminal() -> bool:
    """True when stdout is a terminal (progress bars); False for log files, pipes and captures."""
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def progress(items: Iterable[T], total: int, what: str, quiet: bool = False, unit: str = "",
             lines: int = 4) -> Iterator[T]:
    """Yield ``items``, showing how far along: a tqdm bar on a terminal, else ``lines`` summary
    lines (``what: 15/30 unit``) for log files; nothing with ``quiet``."""
    if quiet:
        yield from items
        return
    if stdout_is_terminal():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=what, unit=f" {unit}" if unit else "it",
                        file=sys.stdout)
        return
    marks = {max(1, round(total * (i + 1) / lines)) for i in range(lines)}
    for done, item in enumerate(items, 1):
        yield item
        if done in marks:
            print(f"{what}: {done}/{total}{' ' + unit if unit else ''}", flush=True)


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
    """Parse ``argv``, silence third-party noise (:func:`quiet_libraries`) and call ``main``.

    :class:`UserError` and file-system failures (:data:`WRITE_ERRORS`) print one ``error:`` line
    and exit 2; :class:`Stopped` exits ``128 + signal``; Ctrl-C exits 130 and SIGTERM 143, each
    with one line saying what was kept (:func:`saved_so_far`) and how to resume.
    """
    args = p.parse_args(argv)
    quiet_libraries()
    saved_so_far("")
    sigterm = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM)
    if sigterm == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)  # stage 3 saves its own way during training
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
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(stop_message(signum), file=sys.stderr)
        sys.exit(128 + signum)
    finally:
        if sigterm == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, sigterm)
