"""``report.html``: one page per stage 5 output folder, readable offline in any browser.

The page has no scripts, fonts or style sheets from elsewhere: its CSS is inline and its pictures
are the PNG files next to it, referenced by relative path (``<run>/confusion_matrix.png``), so the
whole output folder is the report (copy or zip the folder, not only the page). It shows:

* the runs sorted best first (linear-probe accuracy, then kNN) with the baselines on the same
  split below them, the best value of each column in bold, and what each column means;
* grid_summary.png and the verdict line of summary.txt;
* per run: its numbers, the per-class report (report.csv) beside the confusion matrix, the UMAP,
  the morphospace, the nearest neighbours, the contact sheets and the Grad-CAM maps (each when
  present; the long ones folded).
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from ..outputs import read_csv, write_text
from .traits import safe_name

COLUMNS = [  # evaluation.csv column, header, what it means
    ("run", "run", "training run (stage 3 name: batch size, epochs, temperature)"),
    ("backbone", "backbone", "network architecture"),
    ("batch_size", "batch", "SimCLR batch size"),
    ("epochs", "epochs", "SimCLR epochs"),
    ("temperature", "temp", "NT-Xent temperature"),
    ("accuracy", "linear", "accuracy of a logistic regression on the frozen embeddings (cv: mean "
                           "over folds; split: on the validation images)"),
    ("accuracy_sd", "sd", "standard deviation of the linear accuracy over the folds (cv)"),
    ("balanced_accuracy", "balanced", "the same, each class weighted equally"),
    ("macro_f1", "macro F1", "mean F1 over classes"),
    ("knn_accuracy", "kNN", "accuracy of a weighted k-nearest-neighbour vote (cosine)"),
    ("knn_accuracy_sd", "kNN sd", "standard deviation of the kNN accuracy over the folds (cv)"),
    ("imagenet_accuracy", "ImageNet linear", "linear accuracy of the same backbone with ImageNet "
                                             "weights and no SimCLR training"),
    ("pixel_pca_accuracy", "pixel PCA linear", "linear accuracy on raw pixels reduced by PCA"),
    ("silhouette", "silhouette", "how well the classes separate in embedding space (-1..1, higher "
                                 "is better)"),
    ("n_train", "train", "training images (cv: mean per fold)"),
    ("n_val", "scored", "images scored (split: validation images; cv: every labelled image, "
                        "once, by the fold that did not train on it)"),
    ("n_groups", "specimens", "groups (specimens) the folds keep together (cv)"),
]
HIGHER_BETTER = {"accuracy", "balanced_accuracy", "macro_f1", "knn_accuracy", "silhouette"}
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:24px auto;
max-width:1180px;padding:0 16px;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:2em;border-bottom:2px solid #ddd;padding-bottom:4px}
h3{margin:1.4em 0 .4em} .muted{color:#666;font-size:.92em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left} tr.baseline td{color:#555;font-style:italic;background:#fafafa}
tr.best td{background:#eef7ee} td b{color:#0a5}
img{max-width:100%;height:auto;border:1px solid #eee;margin:4px 0}
.pair{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start} .pair>div{flex:1 1 420px}
details{margin:.6em 0} summary{cursor:pointer;font-weight:600}
nav a{margin-right:12px} pre{background:#f6f6f6;padding:8px;white-space:pre-wrap}
dl{font-size:.88em;columns:2} dt{font-weight:600} dd{margin:0 0 .4em 0}
"""


TEXT_COLUMNS = {"run", "class", "backbone", "dataset", "baseline", "name"}


def _fmt(value, column: str = "") -> str:
    """A table cell: 3 decimals for every fraction and score (numbers read back as text too, as
    in a report.csv column with an empty cell), integers for counts, temperatures as given."""
    if isinstance(value, str) and column not in TEXT_COLUMNS:
        try:
            value = float(value)
        except ValueError:
            return value
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer()
                                                and column in ("batch_size", "epochs", "n_train",
                                                               "n_val", "support", "n_groups")):
        return f"{int(value)}"
    if isinstance(value, (float, np.floating)):
        return f"{value:g}" if column == "temperature" else f"{value:.3f}"
    return str(value)


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _src(path: Path, root: Path) -> str:
    return quote(Path(path).relative_to(root).as_posix())


def _img(path: Path, root: Path, alt: str) -> str:
    src = _src(path, root)
    return f'<a href="{src}"><img src="{src}" alt="{_e(alt)}" loading="lazy"></a>'


def run_table(evaluation: pd.DataFrame, baselines: pd.DataFrame | None) -> str:
    """The sorted run table with baseline rows below it, as HTML."""
    runs = evaluation.sort_values(["accuracy", "knn_accuracy"], ascending=False, na_position="last")
    cols = [c for c in COLUMNS if c[0] in runs.columns and not
            ((c[0].endswith("_accuracy") and c[0] not in HIGHER_BETTER or c[0].endswith("_sd")
              or c[0] == "n_groups") and runs[c[0]].isna().all())]
    best = {c: runs[c].max() for c, _, _ in cols if c in HIGHER_BETTER and runs[c].notna().any()}
    head = "".join(f'<th title="{_e(tip)}">{_e(name)}</th>' for _, name, tip in cols)
    body = []
    for i, row in enumerate(runs.to_dict("records")):
        cells = []
        for c, _, _ in cols:
            text = _fmt(row.get(c), c)
            if c == "run":
                text = f'<a href="#{_e(_anchor(row))}">{_e(text)}</a>'
            elif c in best and row.get(c) == best[c]:
                text = f"<b>{_e(text)}</b>"
            else:
                text = _e(text)
            cells.append(f"<td>{text}</td>")
        body.append(f'<tr{" class=best" if i == 0 else ""}>{"".join(cells)}</tr>')
    datasets = set(runs.get("dataset", pd.Series(dtype=str)).astype(str))
    if baselines is not None and len(baselines):
        same = baselines[baselines["dataset"].astype(str).isin(datasets)] if datasets else baselines
        for row in same.to_dict("records"):
            cells = [f"<td>[baseline] {_e(row.get('baseline', row.get('name', '')))}</td>"]
            for c, _, _ in cols[1:]:
                cells.append(f"<td>{_e(_fmt(row.get(c), c)) if c in row else ''}</td>")
            body.append(f'<tr class="baseline">{"".join(cells)}</tr>')
    legend = "".join(f"<dt>{_e(name)}</dt><dd>{_e(tip)}</dd>" for _, name, tip in cols)
    return (f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<details><summary>What the columns mean</summary><dl>{legend}</dl></details>")


def class_table(report_csv: Path) -> str:
    """report.csv (precision, recall, F1, support per class) as HTML."""
    table = read_csv(report_csv, dtype={"class": str}, keep_default_na=False)
    cols = [c for c in ("class", "precision", "recall", "f1-score", "support") if c in table.columns]
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    rows = []
    total = table.loc[table["class"] == "macro avg", "support"] if "support" in cols else []
    for row in table.to_dict("records"):
        summary = row.get("class") in ("accuracy", "macro avg", "weighted avg")
        if row.get("class") == "accuracy":  # scikit-learn repeats the accuracy in every column
            row = {"class": "accuracy (all classes)", "precision": None, "recall": None,
                   "f1-score": row.get("f1-score"), "support": total.iloc[0] if len(total) else None}
        cells = "".join(f"<td>{_e(_fmt(row[c], c)) if row[c] is not None else ''}</td>"
                        for c in cols)
        rows.append(f'<tr{" class=baseline" if summary else ""}>{cells}</tr>')
    return (f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            '<p class="muted">precision: of the images the probe put in a class, the share that '
            "belong there; recall: of a class's images, the share found; support: validation "
            "images of the class; the accuracy row (in the F1 column) is the share of all validation "
            "images classified correctly.</p>")


def _anchor(row: dict) -> str:
    return f"run-{quote(str(row['run']))}" + (f"-{quote(str(row['folder']))}" if _several(row) else "")


def _several(row: dict) -> bool:
    folder = row.get("folder")
    return isinstance(folder, str) and folder != str(row["run"])


def protocol_text(row: dict) -> str:
    """How a row was scored, in words (names the labels, the groups and the folds)."""
    trait = row.get("trait")
    labels = row.get("labels")
    what = (f"labels: {labels}, column {trait}" if isinstance(labels, str) and labels != "clusters"
            else "labels: stage 1 clusters")
    if str(row.get("protocol")) == "cv":
        return (f"{what}; {_fmt(row.get('folds'), 'n_val')}-fold cross-validation over "
                f"{_fmt(row.get('n_val'), 'n_val')} labelled images, stratified and grouped by "
                f"{row.get('groups')} ({_fmt(row.get('n_groups'), 'n_val')} groups): the same folds "
                "for every run and baseline; mean +- sd over the folds")
    return f"{what}; fitted on stage 2's train/, scored once on validation/"


def run_section(run: str, folder: Path, root: Path, row: dict, open_: bool) -> str:
    """One run's part of the page."""
    trait = f" ({row.get('trait')})" if _several(row) else ""
    parts = [f'<h2 id="{_e(_anchor(row))}">{_e(run)}{_e(trait)}</h2>']
    numbers = ", ".join(f"{name} {_fmt(row.get(c), c)}" for c, name, _ in COLUMNS
                        if c in ("accuracy", "accuracy_sd", "knn_accuracy", "imagenet_accuracy",
                                 "silhouette")
                        and c in row and _fmt(row.get(c), c) != "–")
    folds = row.get("fold_scores")
    per_fold = (f" &middot; per fold: linear {_e(folds)}, kNN {_e(row.get('knn_fold_scores'))}"
                if isinstance(folds, str) and folds else "")
    parts.append(f'<p class="muted">{_e(numbers)}{per_fold} &middot; {_e(protocol_text(row))} '
                 f'&middot; folder <code>{_e(folder.relative_to(root).as_posix())}/</code></p>')
    left = (class_table(folder / "report.csv") if (folder / "report.csv").exists()
            else "<p>report.csv missing</p>")
    right = (_img(folder / "confusion_matrix.png", root, "confusion matrix")
             if (folder / "confusion_matrix.png").exists() else "")
    scored = ("every labelled image, out of fold" if str(row.get("protocol")) == "cv"
              else "validation images")
    parts.append(f'<h3>Per class ({scored}, linear probe)</h3>'
                 f'<div class="pair"><div>{left}</div><div>{right}</div></div>')
    figures = [("umap.png", "UMAP of the embeddings (2-D), coloured by class"),
               ("umap_clusters.png", "The same UMAP coloured by stage 1 cluster"),
               ("pca.png", "PCA of the embeddings, coloured by class"),
               ("morphospace.png", "Morphospace: specimens at their PC1/PC2 scores"),
               ("morphospace_pc3_pc4.png", "Morphospace: PC3/PC4"),
               ("morphospace_clusters.png", "Morphospace PC1/PC2 coloured by stage 1 cluster"),
               ("morphospace_clusters_pc3_pc4.png", "Morphospace PC3/PC4 coloured by stage 1 cluster"),
               ("neighbours.png", "Nearest neighbours of a few specimens per class")]
    for name, caption in figures:
        if (folder / name).exists():
            parts.append(f"<h3>{_e(caption)}</h3>{_img(folder / name, root, caption)}")
    for sub, caption in (("sheets", "Contact sheets: each class, nearest its centre first"),
                         ("gradcam", "Grad-CAM: what drives the probe's class and the likeness "
                                     "to the nearest neighbour")):
        files = sorted((folder / sub).glob("*.png"))
        if files:
            imgs = "".join(_img(f, root, f.stem) for f in files)
            parts.append(f"<details{' open' if open_ else ''}><summary>{_e(caption)} "
                         f"({len(files)} figures)</summary>{imgs}</details>")
    return "\n".join(parts)


def _safe(trait: str) -> str:
    return safe_name(trait)


def write_report(out: Path) -> Path:
    """Write ``<out>/report.html`` for a stage 5 output folder; returns its path."""

    out = Path(out)
    evaluation = read_csv(out / "evaluation.csv", dtype={"run": str, "dataset": str})
    baselines = (read_csv(out / "baselines.csv", dtype={"dataset": str})
                 if (out / "baselines.csv").exists() else None)
    if "trait" not in evaluation:
        evaluation["trait"] = ""
    evaluation["trait"] = evaluation["trait"].fillna("").astype(str)
    if "folder" not in evaluation:
        evaluation["folder"] = evaluation["run"].astype(str)
    evaluation["folder"] = evaluation["folder"].fillna(evaluation["run"].astype(str))
    traits = list(dict.fromkeys(evaluation["trait"]))
    verdicts, current = {}, traits[0] if len(traits) == 1 else None
    if (out / "summary.txt").exists():  # "== trait ==" heads each trait's table when several
        for ln in (out / "summary.txt").read_text(encoding="utf-8").splitlines():
            if ln.startswith("== ") and ln.endswith(" =="):
                current = ln[3:-3]
            elif ln.startswith("best run") and current is not None:
                verdicts[current] = ln
    runs = evaluation.sort_values(["accuracy", "knn_accuracy"], ascending=False, na_position="last")
    present = [r for r in runs.to_dict("records") if (out / str(r["folder"])).is_dir()]
    nav = " ".join(f'<a href="#{_e(_anchor(r))}">{_e(r["run"])}'
                   f'{_e(" (" + r["trait"] + ")") if _several(r) else ""}</a>' for r in present)
    body = [f"<h1>wingclr evaluation: {_e(out.resolve().name)}</h1>",
            f'<p class="muted">{len(evaluation)} row(s), written {time.strftime("%Y-%m-%d %H:%M")}. '
            "Every run's embeddings were frozen; within a trait every run and baseline was scored "
            "on the same images, split or folds. The pictures are the files next to this page: "
            "keep the folder together.</p>",
            f"<nav><b>Runs:</b> {nav}</nav>" if nav else ""]
    for trait in traits:
        part = evaluation[evaluation["trait"] == trait]
        first = part.iloc[0].to_dict()
        head = (f"Trait {trait}: runs, best first" if len(traits) > 1 else "Runs, best first")
        verdict = verdicts.get(trait, "")
        body += [f"<h2>{_e(head)}</h2>", f'<p class="muted">{_e(protocol_text(first))}</p>',
                 f"<p><b>{_e(verdict)}</b></p>" if verdict else "", run_table(part, baselines)]
        png = out / ("grid_summary.png" if len(traits) == 1 else f"grid_summary_{_safe(trait)}.png")
        if png.exists() and len(part) > 1:
            body.append("<h3>Grid summary: accuracy against temperature, one line per batch size</h3>"
                        f"{_img(png, out, 'grid summary')}")
    for i, row in enumerate(present):
        body.append(run_section(str(row["run"]), out / str(row["folder"]), out, row, open_=i == 0))
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>wingclr evaluation: {_e(out.resolve().name)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(b for b in body if b)
            + "\n</body></html>\n")
    path = out / "report.html"
    write_text(path, page)
    return path
