"""Stage 4's settings: every flag of ``4-embed/embed.py`` declared once (:mod:`wingclr.flags`): its
parser and ``outputs.RUN_ONLY["4-embed"]`` are built from this class, which is then passed (frozen)
to :func:`wingclr.embed.stage.run_embedding` (stage 5 builds one for each run it embeds).
:data:`BATCH_SIZE` is the one stage 5 uses too (it has no such flag)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..cli import STAGE_DIRS, WORK, Settings
from ..flags import flag, run_only
from ..outputs import RUN_ONLY

BATCH_SIZE = 64  # images per inference batch (--batch-size default)


@dataclass(frozen=True, kw_only=True)
class EmbedSettings(Settings):
    """Every stage 4 flag; the field order is the manifest's "args" order and ``--help``'s."""

    checkpoints: tuple[Path, ...] = flag((), "checkpoint files or training-run folders (default: all "
                                             "finished runs)", type=Path, nargs="*")
    training_dir: Path = flag(STAGE_DIRS["training"], "where finished runs are looked up when "
                                                      "--checkpoints is not given")
    data: Path = flag(STAGE_DIRS["dataset"], "stage 2 output (split.csv + unlabeled/) or a folder of "
                                             "cluster folders")
    output: Path = flag(STAGE_DIRS["embedding"], "one subfolder per run is written here")
    batch_size: int = flag(BATCH_SIZE, "images per inference batch")
    num_workers: int | None = flag(None, "DataLoader workers (default min(8, CPUs))", run_only=True)
    device: str = flag("auto", "auto, cpu or cuda", run_only=True)
    cache_dir: Path | None = flag(WORK / "cache", "stage 3's decode-once image cache; used when it holds "
                                                  "these images", run_only=True)
    quiet: bool = flag(False, "no progress bar", run_only=True)
    overwrite: bool = flag(False, "replace finished embeddings", run_only=True)


RUN_ONLY["4-embed"] = run_only(EmbedSettings)
