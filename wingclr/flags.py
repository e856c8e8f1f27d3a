"""Flags declared once: a stage's frozen settings field carries its flag, and the parser, the
settings class and the run-only table all come from that one declaration.

Example::

    @dataclass(frozen=True, kw_only=True)
    class MySettings(cli.Settings):
        GROUPS = {None: "", "model": "model"}  # help sections, in this order (None: the main options)
        epochs: int = flag(300, "training epochs", group="model")
        quiet: bool = flag(False, "no progress bar", run_only=True)

    parser = flags.parser(MySettings, __doc__)   # --epochs (type int from the annotation), --quiet
    settings = MySettings.from_args(parser.parse_args())
    flags.run_only(MySettings)                   # {"quiet"}: left out of manifest.json

A flag is ``--`` + the field name with ``-`` for ``_``; its argparse ``type`` is the annotation's
when that is ``int``, ``float`` or ``Path`` (``| None`` allowed), a ``bool`` is a ``store_true``
switch; anything else (``choices``, ``action``, ``metavar``, a parsing ``type``) is passed as given.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from . import cli


def flag(default: Any = None, help: str = "", *, group: str | None = None, run_only: bool = False,
         name: str | None = None, also: Sequence[tuple[str, dict]] = (), **argparse_kwargs) -> Any:
    """A settings field that is a command-line flag.

    Args:
        default: the flag's default (a tuple for ``action="append"`` or ``nargs``: the parser gets
            a list).
        help: the ``--help`` text (the formatter adds ``(default: X)``).
        group: key of the class's ``GROUPS`` (its ``--help`` section); None: the main options.
        run_only: the flag changes how a run goes, never what it writes (``outputs.RUN_ONLY``).
        name: the option string when it is not :func:`option` of the field (e.g. ``--no-umap``).
        also: more option strings stored in the same field, e.g.
            ``[("--no-pretrained", {"action": "store_const", "const": "none", "help": ...})]``.
        **argparse_kwargs: ``choices``, ``action``, ``type``, ``metavar``, ... for ``add_argument``.
    """
    return field(default=default, metadata={"flag": {"help": help, "group": group, "run_only": run_only,
                                                     "name": name, "also": tuple(also),
                                                     "kwargs": argparse_kwargs}})


@dataclass(frozen=True)
class OneOf:
    """A ``GROUPS`` title for flags that exclude each other (``required``: exactly one must be
    given); argparse's mutually exclusive group, listed among the main options."""

    required: bool = False


def declared(cls) -> list[Field]:
    """The fields of ``cls`` that are flags, in declaration order."""
    return [f for f in fields(cls) if "flag" in f.metadata]


def option(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def _argparse_kwargs(f: Field, hint: Any) -> dict:
    spec = f.metadata["flag"]
    many = spec["kwargs"].get("action") == "append" or spec["kwargs"].get("nargs") in ("*", "+")
    kwargs = {"default": list(f.default) if many else f.default, "help": spec["help"], **spec["kwargs"]}
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1
    base = args[0] if optional else hint
    action = kwargs.get("action")
    if base is bool and action is None:
        kwargs["action"] = "store_true"
    elif base in (int, float, Path) and "type" not in kwargs and action in (None, cli.Given):
        kwargs["type"] = base
    return kwargs


def add_flags(p: argparse.ArgumentParser, cls) -> argparse.ArgumentParser:
    """Add every flag of ``cls`` to ``p``: the ``cls.GROUPS`` sections (key -> title, or
    :class:`OneOf`; key None: the parser's main options) are made in their order, then the flags
    are added in field order (so the parsed Namespace keeps the fields' order).

    Raises:
        KeyError: a flag names a group that ``cls.GROUPS`` lacks.
    """
    sections = getattr(cls, "GROUPS", {None: ""})  # no GROUPS: every flag among the main options
    groups = {key: p if key is None else p.add_mutually_exclusive_group(required=title.required)
              if isinstance(title, OneOf) else p.add_argument_group(title) for key, title in sections.items()}
    hints = typing.get_type_hints(cls)
    for f in declared(cls):
        spec = f.metadata["flag"]
        target = groups[spec["group"]]
        target.add_argument(spec["name"] or option(f.name), dest=f.name, **_argparse_kwargs(f, hints[f.name]))
        for name, kwargs in spec["also"]:
            target.add_argument(name, dest=f.name, **kwargs)
    return p


def parser(cls, doc: str | None) -> argparse.ArgumentParser:
    """A stage's whole parser (:func:`cli.parser` with ``doc``) built from the declaration ``cls``."""
    return add_flags(cli.parser(doc), cls)


def run_only(cls) -> frozenset[str]:
    """The flags declared ``run_only`` (a stage's entry of ``outputs.RUN_ONLY``)."""
    return frozenset(f.name for f in declared(cls) if f.metadata["flag"]["run_only"])


def defaults(cls) -> dict[str, Any]:
    """Flag -> declared default."""
    return {f.name: f.default for f in declared(cls)}


def value_list(kind: type):
    """argparse ``type`` for a comma-separated list (``32,64``) of distinct ``kind`` values."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 32,64 (got {text!r})")
        if not values or len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"expected distinct comma-separated numbers (got {text!r})")
        return values
    return parse


def count(text: str) -> int:
    """argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; use 0 to switch it off")
    return value
