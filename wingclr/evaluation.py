"""Stage 5: linear evaluation of frozen embeddings (train/ -> validation/), plus kNN.

Linear probe (SimCLR paper's transfer protocol): features standardised, L2-regularised multinomial
logistic regression (L-BFGS), the regularisation strength C chosen by stratified cross-validation
on the training split only, over log-spaced values; the validation split is touched once, to score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .cli import UserError
from .stage import MANIFEST, read_manifest, save_figure, write_csv, write_text

C_GRID = np.logspace(-4, 4, 13)
EVAL_COLUMNS = ["run", "backbone", "batch_size", "epochs", "temperature", "n_train", "n_val",
                "accuracy", "balanced_accuracy", "macro_f1", "knn_accuracy", "probe_C"]


def load_embeddings(emb_dir: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """``(image, cluster, split)`` table and ``(N, D)`` float32 features of a stage 4 run folder."""
    emb_dir = Path(emb_dir)
    csv = emb_dir / "embeddings.csv"
    if not csv.exists():
        raise UserError(f"{csv} not found; run 4-embed/embed.py for this run first")
    ids = pd.read_csv(csv, usecols=["image", "cluster", "split"], dtype=str, keep_default_na=False)
    npy = emb_dir / "embeddings.npy"
    if npy.exists():
        feats = np.load(npy)
    else:
        emb = pd.read_csv(csv)
        feats = emb[[c for c in emb.columns if c.startswith("emb_")]].to_numpy(np.float32)
    if len(feats) != len(ids):
        raise UserError(f"{npy} and {csv} disagree on the number of images; re-run 4-embed with --overwrite")
    return ids, feats


def attach_labels(ids: pd.DataFrame, labels_csv: Path | None) -> pd.Series:
    """Class per image: the cluster, or the ``label`` column of a user CSV keyed by ``image``."""
    if labels_csv is None:
        return ids["cluster"]
    user = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    if not {"image", "label"} <= set(user.columns):
        raise UserError(f"{labels_csv} needs the columns image,label (image as in embeddings.csv)")
    labels = ids["image"].map(dict(zip(user["image"], user["label"])))
    return labels.fillna("")


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, seed: int = 0,
                 c_grid: np.ndarray = C_GRID) -> tuple[np.ndarray, float, float]:
    """Fit the probe on train (C by CV on train only) and predict validation.

    Returns:
        ``(predictions, chosen C, mean CV accuracy)``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = min(5, int(pd.Series(y_train).value_counts().min()))
    if folds < 2:  # a class with one training image: no CV possible, use the default strength
        pipe.fit(x_train, y_train)
        return pipe.predict(x_val), 1.0, float("nan")
    search = GridSearchCV(pipe, {"logisticregression__C": c_grid}, scoring="accuracy",
                          cv=StratifiedKFold(folds, shuffle=True, random_state=seed), n_jobs=1)
    search.fit(x_train, y_train)
    return search.predict(x_val), float(search.best_params_["logisticregression__C"]), float(search.best_score_)


def knn_predict(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, k: int = 20,
                temperature: float = 0.07) -> np.ndarray:
    """Weighted kNN (cosine similarity, votes ``exp(sim / T)``) as in InstDisc / DINO.

    Args:
        x_train: ``(N, D)``; y_train: ``(N,)`` labels; x_val: ``(M, D)``.

    Returns:
        ``(M,)`` predicted labels.
    """
    classes, y_idx = np.unique(y_train, return_inverse=True)
    a = x_train / np.maximum(np.linalg.norm(x_train, axis=1, keepdims=True), 1e-12)
    b = x_val / np.maximum(np.linalg.norm(x_val, axis=1, keepdims=True), 1e-12)
    sim = b @ a.T  # (M, N)
    k = min(k, len(a))
    nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(sim, nn, 1) / temperature)
    votes = np.zeros((len(b), len(classes)))
    np.add.at(votes, (np.repeat(np.arange(len(b)), k), y_idx[nn].ravel()), weights.ravel())
    return classes[votes.argmax(1)]


def plot_confusion(y_true, y_pred, labels, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = 3 + 0.45 * len(labels)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=labels, ax=ax, colorbar=False,
                                            xticks_rotation=45)
    ax.set_title(title)
    save_figure(fig, path)


def run_info(emb_dir: Path) -> dict:
    """Backbone and grid values of the training run behind an embedding folder."""
    manifest = read_manifest(emb_dir) or {}
    model = manifest.get("model", {})
    train_args = model.get("settings", {})
    return {"backbone": model.get("backbone"), "batch_size": train_args.get("batch_size"),
            "epochs": train_args.get("epochs"), "temperature": train_args.get("temperature")}


def evaluate_embeddings(name: str, emb_dir: Path, out_dir: Path, labels_csv: Path | None = None,
                        seed: int = 0, k: int = 20) -> dict:
    """Probe one run's embeddings; write its report folder and return its evaluation.csv row."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, classification_report, f1_score

    ids, feats = load_embeddings(emb_dir)
    y = attach_labels(ids, labels_csv).to_numpy()
    train = ((ids["split"] == "train") & (y != "")).to_numpy()
    val = ((ids["split"] == "validation") & (y != "")).to_numpy()
    if train.sum() < 2 or val.sum() < 1 or len(set(y[train])) < 2:
        raise UserError(f"{emb_dir}: need >= 2 classes in train and >= 1 validation image "
                        "(split.csv from stage 2 gives them; user labels need an image,label CSV)")
    pred, best_c, cv_acc = linear_probe(feats[train], y[train], feats[val], seed)
    knn = knn_predict(feats[train], y[train], feats[val], k)
    yv = y[val]
    labels = sorted(set(y[train]) | set(yv))
    row = {"run": name, **run_info(emb_dir), "n_train": int(train.sum()), "n_val": int(val.sum()),
           "accuracy": accuracy_score(yv, pred), "balanced_accuracy": balanced_accuracy_score(yv, pred),
           "macro_f1": f1_score(yv, pred, average="macro", labels=labels, zero_division=0),
           "knn_accuracy": accuracy_score(yv, knn), "probe_C": best_c, "probe_cv_accuracy": cv_acc}
    out_dir.mkdir(parents=True, exist_ok=True)
    report = classification_report(yv, pred, labels=labels, output_dict=True, zero_division=0)
    write_csv(out_dir / "report.csv", pd.DataFrame(report).T.rename_axis("class").reset_index())
    write_text(out_dir / "classification_report.txt",
               classification_report(yv, pred, labels=labels, zero_division=0))
    write_csv(out_dir / "predictions.csv", pd.DataFrame({
        "image": ids.loc[val, "image"].to_numpy(), "label": yv, "linear": pred, "knn": knn}))
    plot_confusion(yv, pred, labels, out_dir / "confusion_matrix.png", name)
    return row


def upsert_rows(path: Path, rows: list[dict]) -> pd.DataFrame:
    """Add rows to evaluation.csv, replacing earlier rows of the same run."""
    new = pd.DataFrame(rows)
    if path.exists():
        old = pd.read_csv(path)
        new = pd.concat([old[~old["run"].isin(new["run"])], new], ignore_index=True)
    ordered = [c for c in EVAL_COLUMNS if c in new.columns] + [c for c in new.columns if c not in EVAL_COLUMNS]
    new = new[ordered]
    write_csv(path, new)
    return new


def find_embedding_dirs(paths: list[Path], emb_root: Path, embed=None) -> list[tuple[str, Path]]:
    """Embedding folders for stage 4 folders, stage 3 run folders or checkpoints (default: all).

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
        for cand in (p, Path(emb_root) / name):
            if (cand / MANIFEST).exists() and (cand / "embeddings.csv").exists():
                found.append((name, cand))
                break
        else:
            if embed is None:
                raise UserError(f"no embeddings for {p} (looked in {Path(emb_root) / name}); run "
                                f"4-embed/embed.py --checkpoints {p} first")
            found.append((name, embed(p)))
    return found


def print_table(table: pd.DataFrame) -> None:
    cols = [c for c in ("run", "accuracy", "balanced_accuracy", "macro_f1", "knn_accuracy")
            if c in table.columns]
    print(table.sort_values("accuracy", ascending=False)[cols].to_string(
        index=False, float_format=lambda v: f"{v:.3f}"))


def evaluate_runs(args) -> pd.DataFrame:
    """Run stage 5 (see ``5-evaluation/evaluate.py`` for the arguments)."""
    from argparse import Namespace

    from .embedding import embed_run, resolve_runs

    def embed(path: Path) -> Path:
        (name, ckpt), = resolve_runs([path], Path(path).parent)
        embed_args = Namespace(data=args.data, output=args.embeddings, batch_size=64,
                               num_workers=None, device="auto", quiet=False, overwrite=False)
        embed_run(name, ckpt, embed_args)
        return Path(args.embeddings) / name

    out = Path(args.output)
    rows = []
    for name, emb_dir in find_embedding_dirs(args.runs, args.embeddings, embed):
        rows.append(evaluate_embeddings(name, emb_dir, out / name, args.labels, args.seed, args.knn_k))
        print(f"{name}: linear accuracy {rows[-1]['accuracy']:.3f}, kNN {rows[-1]['knn_accuracy']:.3f}")
    table = upsert_rows(out / "evaluation.csv", rows)
    print_table(table)
    print(f"wrote {out / 'evaluation.csv'}")
    return table
