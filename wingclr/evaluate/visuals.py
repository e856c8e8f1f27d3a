"""Stage 5's pictures of one run, and the report page (called from :mod:`wingclr.evaluate.stage`).

Per run folder: ``neighbours.png`` (``--neighbours K``; beside the frozen ImageNet backbone's
neighbours when that baseline was scored), ``sheets/sheet_<class>.png`` (contact sheets of the
classes used), ``gradcam/*.png`` (``--gradcam N``, needs the run's checkpoint) and copies of stage
4's ``morphospace*.png``. ``visuals.json`` records the settings, so a run evaluated again with the
same ones keeps its pictures. Nothing here can fail the stage: a picture that cannot be drawn is a
one-line note.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from ..cli import UserError
from ..outputs import read_manifest, write_text
from ..plotting import pca_figure, save_figure
from .baselines import baseline_features, parse_baselines
from .settings import EvalSettings

MAX_QUERIES = 24   # rows of neighbours.png
STAMP = "visuals.json"


def _note(name: str, what: str, error: Exception) -> None:
    reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    print(f"note: {name}: {what} not drawn ({reason})")


def imagenet_features(split, model: dict, s: EvalSettings) -> tuple[np.ndarray, np.ndarray] | None:
    """The frozen ImageNet backbone's features of the run's images, when that baseline ran."""

    if "imagenet" not in parse_baselines(s.baselines):
        return None
    return baseline_features("imagenet", model, split, s.pixel_size, s.seed, s.device,
                             s.num_workers)


def neighbours_title(name: str, n: int) -> str:
    """The title of neighbours.png (one specimen, or several)."""
    return (f"{name}: nearest neighbours of {n} specimen{'s' * (n != 1)} (validation images "
            "first, seeded)")


def query_rows(split, s: EvalSettings, name: str) -> np.ndarray:
    """Rows of ``--query`` images, or a seeded few per class (validation images first)."""
    from .neighbours import match_queries, pick_queries

    wanted = list(s.query)
    if wanted:
        rows, missing = match_queries(split.images, wanted)
        if missing:
            print(f"note: {name}: --query {', '.join(missing[:3])} not among the embedded images")
        return rows
    classes = len(set(split.y) - {""})
    per_class = 2 if classes * 2 <= MAX_QUERIES else 1
    rows = pick_queries(split.y, per_class, s.seed, prefer=split.val)
    if len(rows) > MAX_QUERIES:
        rng = np.random.default_rng(s.seed)
        rows = np.sort(rng.choice(rows, MAX_QUERIES, replace=False))
    return rows


def run_visuals(name: str, emb_dir: Path, out_dir: Path, split, model: dict, row: dict,
                s: EvalSettings, *, feats: np.ndarray | None = None, ids=None,
                trait: str = "cluster") -> list[Path]:
    """Draw one run's pictures into ``out_dir`` (see the module doc); returns the files written.

    Args:
        split: the run's :class:`~wingclr.evaluate.baselines.SplitData` (rows as in embeddings.csv).
        model: the run's model metadata (stage 4 manifest's ``model``).
        row: its evaluation.csv row (``probe_C``; ``imagenet_accuracy`` says the baseline ran).
        s: stage 5's settings (``neighbours``, ``gradcam``, ``query``, ``seed``, ...).
        feats, ids: the run's ``(N, D)`` embeddings and their table (read again when None).
        trait: the label column scored (``cluster`` without --labels): with --labels the
            morphospace and PCA are drawn coloured by it, stage 4's cluster-coloured ones kept
            beside them as ``*_clusters*.png``.
    """
    try:
        return _run_visuals(name, Path(emb_dir), Path(out_dir), split, model, row, s, feats,
                            ids, trait)
    except Exception as e:  # noqa: BLE001 - pictures never fail the stage
        _note(name, "pictures", e)
        return []


def _run_visuals(name: str, emb_dir: Path, out_dir: Path, split, model: dict, row: dict,
                 s: EvalSettings, feats, ids, trait: str) -> list[Path]:
    from .inputs import load_embeddings

    manifest = read_manifest(emb_dir) or {}
    k, n_cam = s.neighbours, s.gradcam
    stamp = {"embedded": manifest.get("finished"), "dataset": split.key(), "neighbours": k,
             "gradcam": n_cam, "query": list(s.query), "seed": s.seed,
             "baselines": s.baselines, "imagenet": row.get("imagenet_accuracy") == row.get(
                 "imagenet_accuracy"), "trait": s.trait_from(trait)}
    old = out_dir / STAMP
    try:
        previous = json.loads(old.read_text(encoding="utf-8")) if old.exists() else {}
    except (OSError, ValueError):
        previous = {}
    if not isinstance(previous, dict):  # damaged: the figures are drawn again
        previous = {}
    same_data = all(previous.get(key) == stamp[key] for key in ("embedded", "dataset"))
    if n_cam == 0 and same_data:  # without --gradcam, earlier Grad-CAM figures stay valid
        stamp["gradcam"] = previous.get("gradcam", 0)
    if not s.overwrite and previous == stamp:
        return []
    stale = [out_dir / "neighbours.png"] if k == 0 else []
    if not same_data or n_cam > 0:
        stale += (out_dir / "gradcam").glob("*.png")
    for path in [*stale, *(out_dir / "sheets").glob("sheet_*.png")]:
        path.unlink(missing_ok=True)
    if split.root is None or not Path(split.root).is_dir():
        print(f"note: {name}: no pictures (image folder {split.root} not found; pass --data)")
        return []
    start = time.monotonic()
    if feats is None:
        ids, feats = load_embeddings(emb_dir, manifest)
    images = [Path(split.root) / p for p in split.images]
    written = []
    for src in sorted(Path(emb_dir).glob("morphospace*.png")):  # stage 4's: by cluster
        dest = out_dir / (src.name.replace("morphospace", "morphospace_clusters") if s.labels
                          else src.name)
        shutil.copy2(src, dest)
        written.append(dest)
    if s.labels:
        try:
            written += _by_trait(name, feats, split, images, model, s, out_dir, trait)
        except Exception as e:  # noqa: BLE001 - pictures never fail the stage
            _note(name, f"morphospace and PCA by {trait}", e)
    try:
        from ..contact_sheets import write_contact_sheets

        outliers = ("-1", s.outliers_folder)
        written += write_contact_sheets(feats, split.y, images, out_dir / "sheets",
                                        f"{name} ({s.trait_from(trait)})", model,
                                        outliers=outliers, what="class")
    except Exception as e:  # noqa: BLE001 - pictures never fail the stage
        _note(name, "contact sheets", e)
    if k > 0:
        try:
            written += _neighbours(name, feats, split, images, model, row, s, out_dir, k)
        except Exception as e:  # noqa: BLE001
            _note(name, "neighbours.png", e)
    if n_cam > 0:
        try:
            written += _gradcam(name, feats, split, images, model, row, s, out_dir, n_cam, manifest)
        except Exception as e:  # noqa: BLE001
            _note(name, "Grad-CAM", e)
    write_text(old, json.dumps(stamp, indent=2) + "\n")
    print(f"{name}: {len(written)} pictures in {time.monotonic() - start:.1f} s -> {out_dir}")
    return written


def _neighbours(name, feats, split, images, model, row, s, out_dir, k) -> list[Path]:
    from .neighbours import write_neighbours

    baseline, pool = None, None
    if row.get("imagenet_accuracy") == row.get("imagenet_accuracy"):  # scored (not NaN)
        try:
            found = imagenet_features(split, model, s)
        except UserError as e:
            found = None
            _note(name, "ImageNet neighbours", e)
        if found is not None:
            baseline, pool = ("frozen ImageNet", found[0]), found[1]
    queries = query_rows(split, s, name)
    path = write_neighbours(feats, split.y, images, out_dir / "neighbours.png", k, seed=s.seed,
                            queries=queries, baseline=baseline, name="this run (SimCLR)",
                            title=f"{neighbours_title(name, len(queries))}; labels: "
                                  f"{s.trait_from(row.get('trait') or 'cluster')}",
                            meta=model, pool=pool)
    return [path] if path else []


def _by_trait(name, feats, split, images, model, s, out_dir, trait) -> list[Path]:
    """``morphospace.png`` (+ ``_pc3_pc4``) and ``pca.png`` coloured by the trait's labels."""
    from ..features import pca_projection
    from ..morphospace import NO_LABEL, plot_morphospace

    scores, ratio, _ = pca_projection(np.asarray(feats, np.float64))
    groups = np.where(split.y == "", NO_LABEL, split.y)
    legend = f"{trait} ({s.labels_from})"
    title = f"{name}: coloured by {s.trait_from(trait)}"
    path = out_dir / "pca.png"
    save_figure(pca_figure(scores, groups, ratio, title, legend, grey=(NO_LABEL,)), path)
    written = [path]
    for axes, file in (((0, 1), "morphospace.png"), ((2, 3), "morphospace_pc3_pc4.png")):
        if scores.shape[1] > axes[1]:
            plot_morphospace(scores, images, groups, ratio, out_dir / file, title, axes,
                             meta=model, legend_title=legend)
            written.append(out_dir / file)
    return written


def _gradcam(name, feats, split, images, model, row, s, out_dir, n, manifest) -> list[Path]:
    from ..train.checkpoint_files import load_backbone
    from ..features import pick_device
    from .gradcam import write_gradcam

    ckpt = (manifest.get("args") or {}).get("checkpoint")
    if not ckpt or not Path(ckpt).is_file():
        raise FileNotFoundError(f"the run's checkpoint {ckpt} is not there")
    backbone, meta = load_backbone(Path(ckpt))
    return write_gradcam(backbone, meta, feats, split.y, images, split.train, split.val,
                         float(row.get("probe_C", 1.0)), out_dir / "gradcam", n, s.seed,
                         str(pick_device(s.device)))


def write_report_note(out: Path) -> Path | None:
    """``report.html`` for a stage 5 output folder; a failure is a one-line note."""
    from .report import write_report

    try:
        path = write_report(out)
    except Exception as e:  # noqa: BLE001 - the page never fails the stage
        _note(str(out), "report.html", e)
        return None
    print(f"wrote {path}")
    return path
