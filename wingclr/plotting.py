"""Plot plumbing shared by every stage: the pyplot import, atomic figure saving, and the one
categorical palette every scatter, contact sheet and morphospace uses (legends outside the axes).

``pyplot(show=False)`` selects the Agg backend, so plots are written on headless cluster nodes;
stage 1's interactive loop asks for windows with ``show=True``.
"""

from __future__ import annotations

import colorsys
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .outputs import atomic_path

OUTLIER_COLOUR = (0.6, 0.6, 0.6, 0.4)
GREY_NAMES = ("-1", "outliers")  # stage 1/2 names of the images no cluster took
MAX_LEGEND = 20  # more entries than this and the legend is left out


def quiet_glyphs() -> None:
    """No ``Glyph ... missing from font(s)`` warning per character of a label the font lacks (a
    Japanese or Greek class name): the character is drawn as a box, the CSVs keep the name."""
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)


def pyplot(show: bool = False):
    """``matplotlib.pyplot``, on the Agg backend unless figures are to be shown in windows."""
    import matplotlib

    quiet_glyphs()

    if not show:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path | str, dpi: int = 120, close: bool = True) -> None:
    """Save ``fig`` atomically; ``close=False`` keeps it open (to show it in a window after)."""
    import matplotlib.pyplot as plt

    quiet_glyphs()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip("."))
    if close:
        plt.close(fig)


def _palette() -> list[tuple]:
    """20 fixed colours: tab10 and 7 of tab20's light shades (no greys: grey means outlier; no
    light cyan or purple: too close to light blue), then black, navy, teal and maroon."""
    from matplotlib import colormaps

    dark, light = colormaps["tab10"].colors, colormaps["tab20"].colors[1::2]
    extra = [(0.0, 0.0, 0.0), (0.0, 0.25, 0.5), (0.0, 0.45, 0.4), (0.5, 0.0, 0.15)]
    return ([tuple(dark[i]) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]
            + [tuple(light[i]) for i in (0, 1, 2, 3, 5, 6, 8)] + extra)


def class_colours(n: int) -> list[tuple]:
    """``n`` RGBA colours for categories, neighbours in the list clearly different.

    The first 20 are a fixed list (:func:`_palette`; no grey, which is kept for outliers), so a
    class keeps its colour when more classes are added. Beyond 20, colours step round the hue
    circle by the golden angle, alternating dark and light.
    """
    base = _palette()
    out = [(*c, 1.0) for c in base[:n]]
    for i in range(n - len(base)):
        h = (0.11 + i * 0.618034) % 1.0
        out.append((*colorsys.hsv_to_rgb(h, 0.85 if i % 2 else 0.55, 0.55 if i % 2 else 0.95), 1.0))
    return out


def natural_key(name: str) -> list:
    """Sort key putting ``cluster_2`` before ``cluster_10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def group_colours(groups: Sequence, grey: Sequence[str] = GREY_NAMES) -> dict[str, tuple]:
    """Colour per group name (natural order; names in ``grey`` get :data:`OUTLIER_COLOUR`)."""
    names = sorted(set(map(str, groups)), key=natural_key)
    named = [n for n in names if n not in grey]
    colours = dict(zip(named, class_colours(len(named))))
    return {n: colours.get(n, OUTLIER_COLOUR) for n in names}


def legend_outside(ax, title: str | None = None, n: int | None = None, **kw):
    """Legend to the right of ``ax`` (outside the points); none when ``n`` > :data:`MAX_LEGEND`."""
    if n is not None and n > MAX_LEGEND:
        return None
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=7,
                     markerscale=1.5, title=title, title_fontsize=7, frameon=False, **kw)


def scatter_groups(ax, xy: np.ndarray, groups, grey: Sequence[str] = GREY_NAMES, s: float = 12,
                   **kw) -> dict[str, tuple]:
    """Scatter ``(N, 2)`` points one colour per group, grey groups first (underneath)."""
    groups = np.asarray(groups, str)
    colours = group_colours(groups, grey)
    order = [n for n in colours if n in grey] + [n for n in colours if n not in grey]
    for name in order:
        m = groups == name
        ax.scatter(*xy[m].T, s=s * (0.7 if name in grey else 1), color=colours[name],
                   label=f"{name} ({int(m.sum())})", **kw)
    return colours


def pca_figure(scores: np.ndarray, groups, ratio: np.ndarray, title: str,
               legend_title: str = "cluster", grey=("-1", "outliers")):
    """PC1/PC2 scatter coloured by cluster (stage 4's pca.png) or by a trait (stage 5), legend
    outside the axes."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    y = scores[:, 1] if scores.shape[1] > 1 else np.zeros(len(scores))
    colours = scatter_groups(ax, np.c_[scores[:, 0], y], groups, grey, s=10, alpha=0.8)
    legend_outside(ax, f"{legend_title} (images)", len(colours))
    ax.set(xlabel=f"PC1 ({ratio[0]:.1%})", ylabel=f"PC2 ({ratio[1]:.1%})" if len(ratio) > 1 else "",
           title=title)
    return fig


def plot_pca(scores: np.ndarray, groups, ratio: np.ndarray, path: Path, title: str) -> None:
    """Save :func:`pca_figure` to ``path``."""
    save_figure(pca_figure(scores, groups, ratio, title), path)
