"""Grid comparison of evaluated runs: ``grid_summary.png`` and the sorted terminal table.

The figure has one panel per epoch count, temperature on x, linear-probe accuracy on y and one
line per batch size (per backbone too when several are present); the baselines are horizontal
lines in every panel, so "does any run beat them" reads off at a glance. Any subset of the 27 grid
runs works; runs without grid values are listed in the table but not drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .stage import save_figure

GRID_KEYS = ["batch_size", "epochs", "temperature"]
BASELINE_LINES = {"pixel_pca": ("pixel PCA", "--"), "imagenet": ("ImageNet", ":"),
                  "random_init": ("random init", "-.")}
TABLE_COLUMNS = {"run": "run", "batch_size": "batch", "epochs": "epochs", "temperature": "temp",
                 "accuracy": "linear", "balanced_accuracy": "balanced", "knn_accuracy": "kNN",
                 "silhouette": "silhouette", "davies_bouldin": "DB"}


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


def grid_figure(table: pd.DataFrame):
    """The grid summary figure (matplotlib Figure), or None when no row has grid values."""
    from .evalplots import pyplot

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
        for prefix, level in baseline_levels(table).items():
            name, style = BASELINE_LINES[prefix]
            ax.axhline(level, color="0.35", ls=style, lw=1.2, label=f"{name} baseline")
        ax.set(title=f"{e:g} epochs", xlabel="temperature", ylim=(0, 1.02),
               xticks=sorted(grid["temperature"].unique()))
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("linear-probe accuracy (validation)")
    axes[0, -1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return fig


def write_grid_summary(table: pd.DataFrame, path: Path) -> bool:
    """Save :func:`grid_figure` to ``path``; False when there is nothing to draw."""
    fig = grid_figure(table)
    if fig is None:
        return False
    save_figure(fig, path)
    return True


def _fmt(value, spec: str = ".3f") -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:g}" if float(value).is_integer() else f"{value:{spec}}"


def summary_table(table: pd.DataFrame, baselines: list[dict] = ()) -> str:
    """Runs sorted best first (linear accuracy, then kNN), baselines below, and a verdict line.

    Args:
        table: evaluation.csv rows.
        baselines: results of :func:`wingclr.baselines.run_baseline` (``label`` and ``metrics``).
    """
    runs = table.sort_values(["accuracy", "knn_accuracy"], ascending=False, na_position="last")
    rows = [{c: r.get(c) for c in TABLE_COLUMNS} for r in runs.to_dict("records")]
    base = [{"run": f"[baseline] {b['label']}", **{c: b["metrics"].get(c) for c in TABLE_COLUMNS
                                                    if c in b["metrics"]}} for b in baselines]
    shown = pd.DataFrame(rows + base, columns=list(TABLE_COLUMNS)).rename(columns=TABLE_COLUMNS)
    text = shown.apply(lambda col: col.map(lambda v: _fmt(v, "g" if col.name in ("batch", "epochs", "temp")
                                                         else ".3f"))).to_string(index=False)
    if len(runs) and baselines:
        best = runs.iloc[0]
        top = max(baselines, key=lambda b: b["metrics"]["accuracy"])
        gap = best["accuracy"] - top["metrics"]["accuracy"]
        verdict = "beats" if gap > 0 else "does not beat"
        text += (f"\nbest run {best['run']} (linear {best['accuracy']:.3f}) {verdict} the best "
                 f"baseline, {top['label']} ({top['metrics']['accuracy']:.3f}): {gap:+.3f} "
                 f"on {_fmt(best.get('n_val'))} validation images")
    return text
