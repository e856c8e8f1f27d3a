"""Grid comparison of evaluated runs: ``grid_summary.png`` and the sorted terminal table.

The figure has one panel per epoch count, temperature on x, linear-probe accuracy on y and one
line per batch size (per backbone too when several are present); the baselines are horizontal
lines in every panel, so "does any run beat them" reads off at a glance. Each baseline has its own
line style, colour and width (the widest drawn underneath) and a label with its level at the right
edge; labels of baselines at (nearly) equal levels are stacked, not drawn over each other. Any
subset of the 27 grid runs works; runs without grid values are listed in the table but not drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..plotting import pyplot, save_figure
from ..probe import collapse_note, is_collapsed
from .folds import paired, split_scores

GRID_KEYS = ["batch_size", "epochs", "temperature"]
BASELINE_LINES = {"pixel_pca": ("pixel PCA", "--"), "imagenet": ("ImageNet", ":"),
                  "random_init": ("random init", "-.")}
BASELINE_STYLE = {"pixel_pca": ("0.15", 1.2), "imagenet": ("tab:brown", 2.6),
                  "random_init": ("tab:purple", 1.8)}  # colour, width: each shows under the others
LABEL_GAP = 0.055  # least vertical distance between two baseline labels (accuracy units)
TABLE_COLUMNS = {"run": "run", "batch_size": "batch", "epochs": "epochs", "temperature": "temp",
                 "accuracy": "linear", "accuracy_sd": "sd", "balanced_accuracy": "balanced",
                 "knn_accuracy": "kNN", "knn_accuracy_sd": "kNN sd",
                 "silhouette": "silhouette", "davies_bouldin": "DB"}
SPREAD = ("accuracy_sd", "knn_accuracy_sd")  # shown only under --protocol cv


def grid_runs(table: pd.DataFrame) -> pd.DataFrame:
    """Rows with batch size, epochs, temperature and accuracy, as numbers."""
    if not set(GRID_KEYS + ["accuracy"]) <= set(table.columns):
        return table.iloc[0:0]
    grid = table.copy()
    for col in GRID_KEYS + ["accuracy"]:
        grid[col] = pd.to_numeric(grid[col], errors="coerce")
    return grid.dropna(subset=GRID_KEYS + ["accuracy"])


def baseline_levels(table: pd.DataFrame) -> dict[str, float]:
    """Mean linear accuracy of each baseline present in the table, e.g. ``{"pixel_pca": 0.41}``."""
    levels = {}
    for prefix in BASELINE_LINES:
        col = f"{prefix}_accuracy"
        if col in table.columns and pd.to_numeric(table[col], errors="coerce").notna().any():
            levels[prefix] = float(pd.to_numeric(table[col], errors="coerce").mean())
    return levels


def label_heights(levels: dict[str, float], gap: float = LABEL_GAP) -> dict[str, float]:
    """Heights of the baselines' labels: at their levels, pushed up to be ``gap`` apart."""
    heights, last = {}, -np.inf
    for name, level in sorted(levels.items(), key=lambda kv: (kv[1], kv[0])):
        last = heights[name] = max(level, last + gap)
    return heights


def draw_baselines(ax, levels: dict[str, float]) -> None:
    """Horizontal line per baseline (own style) and its name and level at the right edge."""
    heights = label_heights(levels)
    for prefix, level in sorted(levels.items(), key=lambda kv: -BASELINE_STYLE[kv[0]][1]):
        name, style = BASELINE_LINES[prefix]
        colour, width = BASELINE_STYLE[prefix]
        ax.axhline(level, color=colour, ls=style, lw=width, label=f"{name} baseline")
        ax.text(0.99, heights[prefix] + 0.008, f"{name} {level:.3f}", color=colour, fontsize=7,
                ha="right", va="bottom", transform=ax.get_yaxis_transform(),
                bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})


def grid_figure(table: pd.DataFrame, title: str = ""):
    """The grid summary figure (matplotlib Figure), or None when no row has grid values.

    Args:
        title: above the panels (which labels were scored, e.g. ``labels: labels.csv: sex``).
    """

    grid = grid_runs(table)
    if grid.empty:
        return None
    plt = pyplot()
    several = "backbone" in grid.columns and grid["backbone"].nunique() > 1
    keys = ["backbone", "batch_size"] if several else ["batch_size"]
    lines = sorted(grid.groupby(keys).groups)
    colours = plt.get_cmap("tab10")
    epochs = sorted(grid["epochs"].unique())
    fig, axes = plt.subplots(1, len(epochs), figsize=(4.2 * len(epochs) + 1.5, 4), sharey=True,
                             squeeze=False)
    for ax, e in zip(axes[0], epochs):
        panel = grid[grid["epochs"] == e]
        for i, key in enumerate(lines):
            key = key if isinstance(key, tuple) else (key,)
            m = np.logical_and.reduce([panel[k] == v for k, v in zip(keys, key)])
            points = panel[m].groupby("temperature")["accuracy"].mean()
            if len(points):
                label = f"batch {key[-1]:g}" + (f" {key[0]}" if several else "")
                ax.plot(points.index, points.values, marker="o", color=colours(i % 10), label=label)
        draw_baselines(ax, baseline_levels(table))
        ax.set(title=f"{e:g} epochs", xlabel="temperature", ylim=(0, 1.02),
               xticks=sorted(grid["temperature"].unique()))
        ax.grid(alpha=0.3)
    cv = "protocol" in grid.columns and (grid["protocol"].astype(str) == "cv").any()
    axes[0, 0].set_ylabel("linear-probe accuracy (" + ("mean over folds" if cv else "validation") + ")")
    if title:
        fig.suptitle(title, fontsize=9)
    axes[0, -1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return fig


def write_grid_summary(table: pd.DataFrame, path: Path, title: str = "") -> bool:
    """Save :func:`grid_figure` to ``path``; False when there is nothing to draw."""
    fig = grid_figure(table, title)
    if fig is None:
        return False
    save_figure(fig, path)
    return True


def _fmt(value, spec: str = ".3f") -> str:
    """A cell of summary.txt: ``spec`` for every number of a column (``1.000`` beside ``0.983``,
    never ``1``); ``g`` columns (batch, epochs, temperature) as short as they go."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:g}" if spec == "g" else f"{float(value):{spec}}"


def summary_table(table: pd.DataFrame, baselines: list[dict] = ()) -> str:
    """Runs sorted best first (linear accuracy, then kNN), baselines below, and a verdict line.

    Args:
        table: evaluation.csv rows.
        baselines: results of :func:`wingclr.evaluate.baselines.run_baseline` (``label`` and ``metrics``).
    """
    runs = table.sort_values(["accuracy", "knn_accuracy"], ascending=False, na_position="last")
    rows = [{c: r.get(c) for c in TABLE_COLUMNS} for r in runs.to_dict("records")]
    base = [{"run": f"[baseline] {b['label']}", **{c: b["metrics"].get(c) for c in TABLE_COLUMNS
                                                    if c in b["metrics"]}} for b in baselines]
    shown = pd.DataFrame(rows + base, columns=list(TABLE_COLUMNS))
    shown = shown.drop(columns=[c for c in SPREAD if shown[c].isna().all()]).rename(columns=TABLE_COLUMNS)
    text = shown.apply(lambda col: col.map(lambda v: _fmt(v, "g" if col.name in ("batch", "epochs", "temp")
                                                         else ".3f"))).to_string(index=False)
    if len(runs) and baselines:
        text += "\n" + verdict(runs.iloc[0].to_dict(), baselines)
    return text


def verdict(best: dict, baselines: list[dict]) -> str:
    """Does the best run beat the best baseline? No difference when either linear probe collapsed.

    Args:
        best: the best run's evaluation.csv row; baselines: as in :func:`summary_table`.
    """
    top = max(baselines, key=lambda b: b["metrics"]["accuracy"])
    head = (f"best run {best['run']} (linear {best['accuracy']:.3f}) vs the best baseline, "
            f"{top['label']} ({top['metrics']['accuracy']:.3f})")
    cv = str(best.get("protocol")) == "cv"
    where = (f" on {_fmt(best.get('n_val'), 'g')} images in {_fmt(best.get('folds'), 'g')} grouped folds"
             if cv else f" on {_fmt(best.get('n_val'), 'g')} validation images")
    collapsed = [(who, collapse_note(m)) for who, m in (("baseline", top["metrics"]), ("run", best))
                 if is_collapsed(m.get("probe_collapsed"))]
    if collapsed:
        return head + ": no difference given, " + "; ".join(
            f"the {who}'s {note}" for who, note in collapsed) + where
    gap = best["accuracy"] - top["metrics"]["accuracy"]
    compared = paired(split_scores(best.get("fold_scores")),
                      split_scores(top["metrics"].get("fold_scores")))
    if compared is not None:  # the same folds: "beats" only when the paired differences say so
        word = {"beats": "beats", "is worse than": "does worse than",
                "no clear difference": "shows no clear difference to"}[compared.verdict]
        return (f"best run {best['run']} (linear {best['accuracy']:.3f} +- "
                f"{best.get('accuracy_sd', float('nan')):.3f}) {word} the best baseline, "
                f"{top['label']} ({top['metrics']['accuracy']:.3f} +- "
                f"{top['metrics'].get('accuracy_sd', float('nan')):.3f}): {compared}{where}")
    word = "beats" if gap > 0 else "does not beat"
    return (f"best run {best['run']} (linear {best['accuracy']:.3f}) {word} the best baseline, "
            f"{top['label']} ({top['metrics']['accuracy']:.3f}): {gap:+.3f}{where}")
