"""Stage 4's settings: read once from the command line (or built by stage 5 for a run it embeds),
then passed (frozen) to :func:`wingclr.embed.stage.run_embedding`. The defaults live in
``4-embed/embed.py``; :data:`BATCH_SIZE` is the one stage 5 uses too (it has no such flag)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..cli import Settings

BATCH_SIZE = 64  # images per inference batch (--batch-size default)


@dataclass(frozen=True, kw_only=True)
class EmbedSettings(Settings):
    """Every stage 4 flag (see ``4-embed/embed.py --help`` for what each does)."""

    checkpoints: tuple[Path, ...]
    training_dir: Path
    data: Path
    output: Path
    batch_size: int
    num_workers: int | None
    device: str
    cache_dir: Path | None
    quiet: bool
    overwrite: bool
