"""Stage 5's settings: read once from the command line, then passed (frozen) to every stage 5
module instead of the argparse Namespace. The defaults live in ``5-evaluation/evaluate.py`` only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..cli import Settings


@dataclass(frozen=True, kw_only=True)
class EvalSettings(Settings):
    """Every stage 5 flag (see ``5-evaluation/evaluate.py --help`` for what each does)."""

    runs: tuple[Path, ...]
    embeddings: Path
    data: Path | None
    output: Path
    labels: Path | None
    label_column: str
    id_column: str | None
    group_column: str | None
    protocol: str
    folds: int
    allow_partial_labels: bool
    knn_k: int
    baselines: str
    pixel_size: int
    umap: bool
    outliers_folder: str
    seed: int
    device: str
    num_workers: int | None
    cache_dir: Path | None
    neighbours: int
    query: tuple[str, ...]
    gradcam: int
    overwrite: bool
    quiet: bool

    @property
    def labels_from(self) -> str:
        """Where the classes come from, for figure titles: ``clusters`` or the --labels file name."""
        return Path(self.labels).name if self.labels else "clusters"

    @property
    def traits(self) -> list[str]:
        """The label columns scored (``["cluster"]`` without --labels)."""
        from .inputs import label_columns

        return label_columns(self.label_column) if self.labels else ["cluster"]

    def trait_from(self, trait: str) -> str:
        """``labels.csv: sex`` (``clusters`` without --labels): named in every title."""
        return f"{self.labels_from}: {trait}" if self.labels else "clusters"
