"""Stage 5's settings: every flag of ``5-evaluation/evaluate.py`` declared once (:mod:`wingclr.flags`):
its parser and ``outputs.RUN_ONLY["5-evaluation"]`` are built from this class, which is then
passed (frozen) to every stage 5 module instead of the argparse Namespace."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..cli import STAGE_DIRS, WORK, Settings
from ..flags import count, flag, run_only
from ..outputs import RUN_ONLY


@dataclass(frozen=True, kw_only=True)
class EvalSettings(Settings):
    """Every stage 5 flag; the field order is the manifest's "args" order and ``--help``'s."""

    runs: tuple[Path, ...] = flag((), "embedding folders, training-run folders or checkpoints (default: all "
                                      "finished embeddings); unfinished training runs are skipped",
                                  type=Path, nargs="*")
    embeddings: Path = flag(STAGE_DIRS["embedding"], "stage 4 output folder")
    data: Path | None = flag(None, "stage 2 output: images for the baselines and for runs that still have to "
                                   "be embedded (default: the folder each run was embedded from, else "
                                   f"{STAGE_DIRS['dataset']})")
    output: Path = flag(STAGE_DIRS["evaluation"], "output folder")
    labels: Path | None = flag(None, "CSV with label column(s) (--label-column) and a column naming the "
                                     "images (image, specimen, source_image or --id-column), used instead "
                                     "of the clusters")
    label_column: str = flag("label", "the --labels column(s) scored, comma-separated (e.g. sex,genus: one "
                                      "block per trait); header names are matched ignoring case")
    id_column: str | None = flag(None, "the --labels column naming the images (default: the first of "
                                       "specimen, source_image, image it has; e.g. filename: file names "
                                       "match too)")
    group_column: str | None = flag(None, "the --labels column giving each photo's specimen (e.g. id): the "
                                          "folds keep a group together (default: the embeddings' group "
                                          "column, else specimen)")
    protocol: str = flag("cv", "cv: stratified k-fold grouped by specimen over the labelled train and "
                               "validation images, mean +- sd over folds; split: fit on stage 2's train/, "
                               "score once on validation/", choices=("cv", "split"))
    folds: int = flag(5, "folds of --protocol cv")
    allow_partial_labels: bool = flag(False, "evaluate even when fewer than half the embedded images have a "
                                             "label in --labels (only the labelled ones are used)")
    knn_k: int = flag(20, "neighbours for the kNN accuracy")
    baselines: str = flag("pixel,imagenet", "comma-separated: pixel (pixel PCA), imagenet (ImageNet weights, "
                                            "no SimCLR), random (random init, no training); 'none' for no "
                                            "baselines",
                          also=[("--no-baselines", {"action": "store_const", "const": "none",
                                                    "help": "same as --baselines none"})])
    pixel_size: int = flag(32, "side (px) the images are letterboxed to for the pixel-PCA baseline")
    umap: bool = flag(True, "skip umap.png (the first UMAP in a process costs ~10-30 s)", name="--no-umap",
                      action="store_false")
    outliers_folder: str = flag("outliers", "cluster drawn in grey in umap.png (stage 2's outliers)")
    seed: int = flag(0, "seed of the cross-validation folds, UMAP and the random-init baseline")
    device: str = flag("auto", "auto, cpu or cuda (baselines, embedding)", run_only=True)
    num_workers: int | None = flag(None, "DataLoader workers for baselines/embedding (default min(8, CPUs))",
                                   run_only=True)
    cache_dir: Path | None = flag(WORK / "cache", "stage 3's decode-once image cache, read when a training "
                                                  "run is embedded here", run_only=True)
    neighbours: int = flag(5, "neighbours per query in each run's neighbours.png (0: none)", type=count)
    query: tuple[str, ...] = flag((), "images (paths as in embeddings.csv, or file names) shown with their "
                                      "neighbours instead of 2 seeded ones per class", nargs="*")
    gradcam: int = flag(0, "Grad-CAM figures of this many specimens per run (needs the run's checkpoint; "
                           "~1 s each on a CPU)", type=count)
    quiet: bool = flag(False, "no progress bar while embedding runs that have no embeddings yet", run_only=True)
    overwrite: bool = flag(False, "evaluate finished runs again", run_only=True)

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


RUN_ONLY["5-evaluation"] = run_only(EvalSettings)
