"""Stage 5: evaluate frozen embeddings, one folder per run (and trait).

Protocols (``--protocol``): ``cv`` (default) scores every labelled train and validation image of
stage 2 out of fold, on grouped stratified folds that are the same for every run and baseline
(:mod:`wingclr.evaluate.folds`); ``split`` fits on stage 2's train/ and scores validation/ once.
With ``--labels ... --label-column sex,genus`` each trait is scored on its own (``<run>/<trait>/``).

Per run (``<output>/<run>/``): linear probe and weighted kNN (:mod:`wingclr.probe`), silhouette and
Davies-Bouldin of the classes in embedding space, report.csv, classification_report.txt,
predictions.csv, confusion_matrix.png, umap.png and manifest.json (written last; it also keeps the
run's evaluation.csv row, so a finished run is skipped when evaluated again with the same settings).
Baselines (:mod:`wingclr.evaluate.baselines`) are scored once per dataset on the same split. The output root
gets evaluation.csv (one row per run, upserted), baselines.csv, grid_summary.png and summary.txt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..cli import STAGE_DIRS, UserError, check_gpu_request, check_minimum, require_output_folder
from ..embed.settings import BATCH_SIZE, EmbedSettings
from ..outputs import (MANIFEST, check_finished, read_csv, read_manifest, write_csv, write_manifest,
                       write_text)
from ..probe import collapse_note, is_collapsed
from .baselines import BASELINES, SplitData, parse_baselines, run_baseline, score_features
from .folds import paired, split_scores
from .gridplot import summary_table, write_grid_summary
from .inputs import check_data, identity_columns, load_embeddings
from .figures import plot_confusion, save_umap, umap_2d
from .settings import EvalSettings
from .traits import check_queries, load_split, make_split, safe_name, trait_splits  # noqa: F401
from .visuals import run_visuals, write_report_note

EVAL_COLUMNS = ["run", "backbone", "batch_size", "epochs", "temperature", "n_train", "n_val",
                "accuracy", "balanced_accuracy", "macro_f1", "knn_accuracy",
                *[f"{b}_{m}" for b in BASELINES.values() for m in ("accuracy", "knn_accuracy")],
                "silhouette", "davies_bouldin", "probe_C", "probe_cv_accuracy", "dataset",
                "probe_collapsed", "probe_collapsed_to",
                *[f"{b}_probe_collapsed" for b in BASELINES.values()],
                # appended, so scripts reading the older columns by position keep working
                "trait", "labels", "protocol", "folds", "groups", "n_groups", "accuracy_sd",
                "knn_accuracy_sd", "fold_scores", "knn_fold_scores",
                *[f"{b}_{m}" for b in BASELINES.values()
                  for m in ("accuracy_sd", "fold_scores", "knn_fold_scores")], "folder"]
MODEL_KEYS = ("backbone", "in_chans", "input_size", "mean", "std")  # what a baseline needs


def run_info(manifest: dict) -> dict:
    """Backbone and grid values of the training run behind an embedding folder's manifest."""
    model = manifest.get("model", {})
    train_args = model.get("settings", {})
    return {"backbone": model.get("backbone"), "batch_size": train_args.get("batch_size"),
            "epochs": train_args.get("epochs"), "temperature": train_args.get("temperature")}


def image_root(manifest: dict, data: Path | None) -> Path | None:
    """Folder the embedded image paths are relative to: ``--data`` or the one stage 4 used."""
    from ..features import image_table

    data = data or manifest.get("args", {}).get("data")
    try:
        return image_table(Path(data))[0] if data else None
    except UserError:
        return None


def write_reports(out_dir: Path, split: SplitData, pred: dict, ids: pd.DataFrame | None = None) -> None:
    """report.csv, classification_report.txt and predictions.csv of the scored rows."""
    from sklearn.metrics import classification_report

    rows = pred["rows"]
    yv, linear = split.y[rows], pred["linear"]
    labels = sorted(set(split.y[split.train | split.val]))
    report = classification_report(yv, linear, labels=labels, output_dict=True, zero_division=0)
    table = pd.DataFrame(report).T
    if "accuracy" in table.index:  # sklearn's dict repeats the accuracy in every column
        table.loc["accuracy", ["precision", "recall"]] = np.nan  # as in its text report:
        table.loc["accuracy", "support"] = len(yv)  # accuracy under f1-score, all images counted
    write_csv(out_dir / "report.csv", table.rename_axis("class").reset_index())
    write_text(out_dir / "classification_report.txt",
               classification_report(yv, linear, labels=labels, zero_division=0))
    folds = {} if pred["fold"] is None else {"fold": pred["fold"]}
    ident = identity_columns(ids, rows)
    if folds:  # the groups the folds kept together (the embeddings' group, or --group-column)
        ident["group"] = split.groups[rows]
    write_csv(out_dir / "predictions.csv", pd.DataFrame({
        "image": split.images[rows], "label": yv, "linear": linear, "knn": pred["knn"], **folds,
        **ident}))


def umap_colouring(ids: pd.DataFrame, split: SplitData, *, labels: Path | None,
                   outliers_folder: str, trait: str = "label") -> tuple[np.ndarray, str, str]:
    """What the stage 5 UMAP is coloured by: ``(group per row, grey group, legend title)``.

    With ``--labels`` the user's labels (images without one grey), otherwise the clusters
    (stage 2's outliers folder grey).
    """
    if labels:
        return (np.where(split.y == "", "no label", split.y), "no label",
                f"{trait} ({Path(labels).name})")
    return ids["cluster"].to_numpy(str), outliers_folder, "cluster"


def trait_settings(s: EvalSettings, trait: str) -> dict:
    """What makes one trait's finished output: the flags of old outputs stay as they were."""
    extra = {}
    if s.protocol != "split":
        extra.update(protocol=s.protocol, folds=s.folds)
    if s.labels and (s.label_column != "label" or s.id_column or s.group_column):
        extra.update(trait=trait, id_column=s.id_column, group_column=s.group_column)
    return extra


def evaluate_trait(name: str, emb_dir: Path, out_dir: Path, data: tuple, trait: str,
                   split: SplitData, groups_from: str, s: EvalSettings, umap_cache: dict) -> dict:
    """Evaluate one run's embeddings for one trait into ``out_dir`` (skipped when finished with
    these settings).

    Args:
        data: ``(manifest, ids, feats)`` of the run (read once per run).
        umap_cache: the run's 2-D UMAP, computed once and shared by its traits.

    Returns:
        The evaluation.csv row without baselines.
    """

    manifest, ids, feats = data
    cv = split.protocol == "cv"
    scored = split.train | split.val
    if len(set(split.y[split.train])) < 2 or split.train.sum() < 2 or split.val.sum() < 1 or (
            cv and len(set(split.groups[scored])) < 2):
        raise UserError(f"{emb_dir}: {trait}: need >= 2 classes and "
                        + ("2 specimens among the labelled images" if cv else
                           ">= 2 train and >= 1 validation image")
                        + " (split.csv from stage 2 gives them; user labels need a label column "
                          "beside image, specimen or source_image)")
    recorded = {"embeddings": str(Path(emb_dir).resolve()), "embedded": manifest.get("finished"),
                "labels": str(s.labels) if s.labels else None, "knn_k": s.knn_k,
                "seed": s.seed, **trait_settings(s, trait)}
    labels_from = s.trait_from(trait)
    if check_finished(out_dir, recorded, s.overwrite, "evaluation"):
        print(f"skip: {out_dir} is finished (manifest.json); pass --overwrite to evaluate again")
        row = read_manifest(out_dir)["row"]
        row.update({k: v for k, v in {"trait": trait, "labels": s.labels_from, "protocol": split.protocol,
                    "folder": out_dir.relative_to(Path(s.output)).as_posix()}.items() if k not in row})
    else:
        (out_dir / MANIFEST).unlink(missing_ok=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics, pred = score_features(feats, split, s.seed, s.knn_k)
        write_reports(out_dir, split, pred, ids)
        labels = sorted(set(split.y[scored]))
        what = (f"images scored out of {metrics['folds']} grouped folds" if cv
                else "validation images")
        plot_confusion(split.y[pred["rows"]], pred["linear"], labels,
                       out_dir / "confusion_matrix.png", name, labels_from, what=what)
        row = {"run": name, **run_info(manifest), **metrics, "dataset": split.key(),
               "trait": trait, "labels": s.labels_from, "protocol": split.protocol,
               "groups": groups_from, "folder": out_dir.relative_to(Path(s.output)).as_posix()}
        for stale in ("umap.png", "umap_clusters.png"):  # drawn for other settings (e.g. labels)
            (out_dir / stale).unlink(missing_ok=True)
    if s.umap and not (out_dir / "umap.png").exists():
        if "xy" not in umap_cache:

            umap_cache["xy"] = umap_2d(feats, s.seed)
        groups, grey, legend = umap_colouring(ids, split, labels=s.labels, trait=trait,
                                              outliers_folder=s.outliers_folder)
        save_umap(umap_cache["xy"], groups, grey, out_dir / "umap.png", f"{name} ({labels_from})",
                  legend)
        if s.labels:  # the clusters keep their own figure
            save_umap(umap_cache["xy"], ids["cluster"].to_numpy(str), s.outliers_folder,
                      out_dir / "umap_clusters.png", f"{name} (stage 1 clusters)", "cluster")
    if read_manifest(out_dir) is None:
        write_manifest(out_dir, "5-evaluation", recorded, seed=s.seed, packages=("scikit-learn",),
                       counts={"train": row["n_train"], "validation": row["n_val"]}, row=row)
    return row


def baseline_columns(split: SplitData, model: dict, s: EvalSettings, cache_dir: Path, notes: dict,
                     results: dict) -> dict:
    """evaluation.csv baseline columns for one run; NaN (and a note) when one is unavailable.

    Args:
        notes: one-line notes, collected so each is printed once.
        results: filled with every baseline result, keyed by its label and dataset.
    """
    cols = {}
    for method in parse_baselines(s.baselines):
        prefix = BASELINES[method]
        cols[f"{prefix}_accuracy"] = cols[f"{prefix}_knn_accuracy"] = float("nan")
        cols[f"{prefix}_probe_collapsed"] = float("nan")
        missing = [k for k in MODEL_KEYS if k not in model]
        try:
            if missing:
                raise UserError(f"the embeddings' manifest.json lacks model.{missing[0]}")
            res = run_baseline(method, model, split, cache_dir, s.pixel_size, s.seed,
                               s.knn_k, s.device, s.num_workers)
        except UserError as e:
            notes.setdefault(str(e), f"note: {prefix} baseline left empty: {e}")
            continue
        results[(res["label"], res["settings"]["dataset"])] = res
        cols[f"{prefix}_accuracy"] = res["metrics"]["accuracy"]
        cols[f"{prefix}_knn_accuracy"] = res["metrics"]["knn_accuracy"]
        for m in ("accuracy_sd", "fold_scores", "knn_fold_scores"):
            if m in res["metrics"]:
                cols[f"{prefix}_{m}"] = res["metrics"][m]
        cols[f"{prefix}_probe_collapsed"] = is_collapsed(res["metrics"].get("probe_collapsed"))
    return cols


def imagenet_beside(row: dict) -> str:
    """``"; frozen ImageNet: linear 0.710 (SimCLR -0.020), kNN 0.650"`` or "" without that baseline.

    SimCLR fine-tuning can make ImageNet features worse; the user sees it on every run's line.
    When either linear probe collapsed (:func:`wingclr.probe.probe_collapse`) no difference is
    given: the line says which one collapsed.
    """
    base = row.get("imagenet_accuracy", float("nan"))
    if base != base:  # NaN: not computed
        return ""
    if is_collapsed(row.get("imagenet_probe_collapsed")):
        gap = "its linear probe collapsed"
    elif is_collapsed(row.get("probe_collapsed")):
        gap = "no difference: the run's linear probe collapsed"
    else:
        gap = f"SimCLR {row['accuracy'] - base:+.3f}"
        compared = paired(split_scores(row.get("fold_scores")),
                          split_scores(row.get("imagenet_fold_scores")))
        if compared is not None:  # --protocol cv: the same folds, paired
            gap = f"SimCLR {compared}: {compared.verdict}"
    return f"; frozen ImageNet: linear {base:.3f} ({gap}), kNN {row['imagenet_knn_accuracy']:.3f}"


def _sd(row: dict, column: str) -> str:
    sd = row.get(f"{column}_sd")
    return f" +- {sd:.3f}" if isinstance(sd, float) and sd == sd else ""


def run_line(row: dict) -> str:
    """The line printed per evaluated run (and trait: ``run [sex]``)."""
    note = collapse_note(row)
    trait = row.get("trait")
    name = f"{row['run']} [{trait}]" if trait and trait != "cluster" else row["run"]
    return (f"{name}: linear accuracy {row['accuracy']:.3f}{_sd(row, 'accuracy')}"
            + (f" ({note})" if note else f", kNN {row['knn_accuracy']:.3f}{_sd(row, 'knn_accuracy')}")
            + f", silhouette {row['silhouette']:.3f}{imagenet_beside(row)}")


def upsert_rows(path: Path, rows: list[dict], keys: tuple[str, ...] = ("run", "trait"),
                order: list[str] = EVAL_COLUMNS) -> pd.DataFrame:
    """Add rows to a CSV, replacing earlier rows with the same ``keys`` (keys an older file
    lacks are left out of the match)."""
    new = pd.DataFrame(rows)
    if path.exists() and len(new):
        old = read_csv(path, dtype={k: str for k in (*keys, "dataset")})
        match = [k for k in keys if k in old.columns and k in new.columns]
        if match and keys[0] in match:
            same = old.set_index(match).index.isin(new.set_index(match).index)
            new = pd.concat([old[~same], new], ignore_index=True)
    elif path.exists():
        new = read_csv(path)
    new = new[[c for c in order if c in new.columns] + [c for c in new.columns if c not in order]]
    write_csv(path, new)
    return new


def find_embedding_dirs(paths: list[Path], emb_root: Path, embed=None) -> list[tuple[str, Path]]:
    """Embedding folders for stage 4 folders, stage 3 run folders or checkpoints (default: all).

    Unfinished training-run folders (no manifest.json) are skipped with a message, so
    ``--runs work/3-training/*`` evaluates whatever has finished.

    Args:
        embed: called as ``embed(path)`` for a checkpoint or training run that has no embeddings
            yet; returns its embedding folder. Without it such paths are an error.
    """
    if not paths:
        dirs = sorted(p.parent for p in Path(emb_root).glob(f"*/{MANIFEST}"))
        if not dirs:
            raise UserError(f"no finished embeddings in {emb_root}; run 4-embed/embed.py first")
        return [(d.name, d) for d in dirs]
    found = []
    for p in map(Path, paths):
        name = p.parent.name if p.name == "last.ckpt" else (p.stem if p.suffix == ".ckpt" else p.name)
        done = [c for c in (p, Path(emb_root) / name)
                if (c / MANIFEST).exists() and (c / "embeddings.csv").exists()]
        if done:
            found.append((name, done[0]))
        elif p.is_dir() and not (p / MANIFEST).exists():
            print(f"skip: {p} is not finished (no manifest.json); pass {p / 'last.ckpt'} to "
                  "evaluate its last epoch")
        elif embed is None:
            raise UserError(f"no embeddings for {p} (looked in {Path(emb_root) / name}); run "
                            f"4-embed/embed.py --checkpoints {p} first")
        else:
            found.append((name, embed(p)))
    if not found:
        raise UserError(f"none of the {len(paths)} --runs is finished; wait for training or "
                        "pass checkpoints (last.ckpt) explicitly")
    return found


def evaluate_runs(s: EvalSettings) -> pd.DataFrame:
    """Run stage 5 (``EvalSettings.from_args`` of ``5-evaluation/evaluate.py``'s arguments)."""
    from ..embed.stage import run_embedding

    def embed(path: Path) -> Path:
        """Stage 4 on one run, with stage 5's data, device, workers and cache."""
        folder, = run_embedding(EmbedSettings(
            checkpoints=(Path(path),), training_dir=Path(path).parent,
            data=s.data or STAGE_DIRS["dataset"], output=s.embeddings, batch_size=BATCH_SIZE,
            num_workers=s.num_workers, device=s.device, cache_dir=s.cache_dir, quiet=s.quiet,
            overwrite=False), output_flag="--embeddings")
        return folder

    parse_baselines(s.baselines)  # bad names and flags fail before any work
    check_minimum(("--knn-k", s.knn_k, 1), ("--num-workers", s.num_workers, 0),
                  ("--pixel-size", s.pixel_size, 1), ("--folds", s.folds, 2))
    check_gpu_request("--device", s.device)
    require_output_folder(s.output)
    if s.labels is not None and not Path(s.labels).is_file():
        raise UserError(f"--labels {s.labels} does not exist; pass a CSV with a label column and "
                        "an image, specimen or source_image column")
    for flag, value in (("--id-column", s.id_column), ("--group-column", s.group_column),
                        ("--label-column", None if s.label_column == "label" else s.label_column)):
        if value and not s.labels:
            raise UserError(f"{flag} {value} names a column of --labels; pass --labels <file.csv>")
    out = Path(s.output)
    rows, notes, results = [], {}, {}
    for name, emb_dir in find_embedding_dirs(s.runs, s.embeddings, embed):
        manifest = read_manifest(emb_dir) or {}
        ids, feats = load_embeddings(emb_dir, manifest)  # once per run: one note when edited
        check_queries(ids, s.query, emb_dir)
        root = check_data(ids, emb_dir, manifest, s.data, image_root(manifest, s.data))
        traits = trait_splits(ids, root, s)
        umap_cache: dict = {}
        for trait, split, groups_from in traits:
            folder = out / name if len(traits) == 1 else out / name / safe_name(trait)
            row = evaluate_trait(name, emb_dir, folder, (manifest, ids, feats), trait, split,
                                 groups_from, s, umap_cache)
            row.update(baseline_columns(split, manifest.get("model", {}), s, out / "baselines",
                                        notes, results))
            rows.append(row)
            print(run_line(row))
            run_visuals(name, emb_dir, folder, split, manifest.get("model", {}), row, s,
                        feats=feats, ids=ids, trait=trait)  # notes, never fails
    for note in notes.values():
        print(note)
    table = upsert_rows(out / "evaluation.csv", rows)
    baselines = list(results.values())
    if baselines:
        upsert_rows(out / "baselines.csv", [{"baseline": b["label"], "name": b["name"],
                                             "dataset": b["settings"]["dataset"], **b["metrics"]}
                                            for b in baselines], keys=("baseline", "dataset"),
                    order=["baseline", "name", "dataset"])
    texts = []
    traits = list(dict.fromkeys(table["trait"].fillna("").astype(str))) if "trait" in table else [""]
    for trait in traits:
        part = table[table["trait"].fillna("").astype(str) == trait] if "trait" in table else table
        datasets = set(part["dataset"].astype(str))
        mine = [b for b in baselines if str(b["settings"]["dataset"]) in datasets]
        png = out / ("grid_summary.png" if len(traits) == 1 else f"grid_summary_{safe_name(trait)}.png")
        labels = str(part["labels"].iloc[0]) if "labels" in part and part["labels"].notna().any() else ""
        said = f"labels: {labels}: {trait}" if labels and labels != "clusters" else "labels: clusters"
        if write_grid_summary(part, png, said):
            print(f"wrote {png}")
        text = summary_table(part, mine)
        texts.append(text if len(traits) == 1 else f"== {trait} ==\n{text}")
    text = "\n\n".join(texts)
    write_text(out / "summary.txt", text + "\n")
    print(text)
    print(f"wrote {out / 'evaluation.csv'}")
    write_report_note(out)
    return table
