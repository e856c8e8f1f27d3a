"""Synthetic butterfly specimens with ground-truth wing masks and phenotype labels.

Each specimen has four wings (label image: 1 forewing_left, 2 forewing_right, 3 hindwing_left,
4 hindwing_right), a body and antennae (background in the wing mask), and sometimes a pin and a
paper label. The phenotype is a wing *pattern* family; base and pattern colours are drawn from one
palette for every phenotype, and pose, scale, wing shape, lighting and background vary, so colour
statistics alone do not give the phenotype away. Pattern elements are drawn at >= ~6 % of the wing
length, so they survive downscaling to the 64 px of ``make demo`` (at ~2 % they vanished below
ResNet's stride-4 stem and no short SimCLR run could learn them).

Usage:
    python -m wingclr.demo --output work/demo --n 240 --size 128
writes ``specimens/<id>.png``, ``masks/<id>.png``, ``clusters/<phenotype>/<id>.png`` (hand-made
cluster folders for stage 2), ``labels.csv`` and ``manifest.json``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .cli import HelpFormatter
from .outputs import atomic_path, write_csv, write_manifest

WING_CLASSES = ("forewing_left", "forewing_right", "hindwing_left", "hindwing_right")
PHENOTYPES = ("band", "spots", "eyespots", "rays", "margin")
PALETTE = np.array([
    (230, 120, 20), (245, 200, 40), (30, 25, 25), (110, 70, 40), (235, 230, 215),
    (60, 90, 190), (200, 40, 30), (150, 150, 150)], np.float32)
BACKGROUNDS = np.array([(238, 238, 236), (215, 210, 195), (200, 205, 215), (250, 250, 250),
                        (175, 180, 185)], np.float32)


@dataclass
class Specimen:
    image: np.ndarray       # (S, S, 3) uint8 RGB
    wings: np.ndarray       # (S, S) uint8 label image, 0 background, 1..4 WING_CLASSES
    foreground: np.ndarray  # (S, S) bool, wings + body + antennae
    phenotype: str
    pattern: np.ndarray | None = None  # (S, S) bool, wing pixels painted with the pattern
    body: np.ndarray | None = None     # (S, S) bool, body and antennae


def _bezier(p0, c, p1, n=24) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(c) + t ** 2 * np.asarray(p1)


def _bulge(p0, p1, amount: float) -> np.ndarray:
    """Control point pushing the segment p0->p1 outwards (to its right) by ``amount`` x length."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    return (p0 + p1) / 2 + amount * np.array([d[1], -d[0]])


def _outline(points, bulges) -> np.ndarray:
    pts = [_bezier(points[i], _bulge(points[i], points[(i + 1) % len(points)], bulges[i]),
                   points[(i + 1) % len(points)]) for i in range(len(points))]
    return np.concatenate(pts).astype(np.int32)


def _wing_polygons(rng, cx, cy, L) -> dict[int, np.ndarray]:
    """Right-side wing outlines mirrored to the left, with a little asymmetry."""
    out = {}
    for side, sign in (("left", -1), ("right", 1)):
        j = lambda s: 1 + rng.normal(0, s)  # noqa: E731 - small per-side jitter
        a_apex = math.radians(38 * j(0.08))
        a_tornus = math.radians(-12 * j(0.2))
        base_f = np.array([cx + sign * 0.06 * L, cy - 0.12 * L])
        apex = base_f + L * j(0.04) * np.array([sign * math.cos(a_apex), -math.sin(a_apex)])
        tornus = base_f + 0.78 * L * j(0.05) * np.array([sign * math.cos(a_tornus), -math.sin(a_tornus)])
        inner = base_f + 0.25 * L * np.array([sign * 0.9, 0.25])
        fore = [base_f, apex, tornus, inner]
        base_h = np.array([cx + sign * 0.05 * L, cy + 0.02 * L])
        outer = base_h + 0.72 * L * j(0.05) * np.array([sign * 0.93, 0.2])
        lower = base_h + 0.68 * L * j(0.06) * np.array([sign * 0.45, 0.9])
        hind = [base_h, outer, lower]
        b = 1 if sign > 0 else -1  # bulge direction flips with the mirrored winding
        out[WING_CLASSES.index(f"forewing_{side}") + 1] = _outline(fore, [b * 0.08, b * 0.12, b * 0.02, 0])
        out[WING_CLASSES.index(f"hindwing_{side}") + 1] = _outline(hind, [b * 0.15, b * 0.3, b * 0.05])
    return out


def _pattern(rng, phenotype, wing_masks, polys, canvas, colour, L) -> np.ndarray:
    """Paint the phenotype's pattern in ``colour`` inside the wings (in place); returns its mask."""
    layer = np.zeros(canvas.shape[:2], np.uint8)
    for label, poly in polys.items():
        fore = label in (1, 2)
        pts = poly.astype(float)
        base, far = pts[0], pts[len(pts) // 4]  # wing base and a point near the apex/outer edge
        centre = pts.mean(0)
        if phenotype == "band" and fore:
            mid = base + 0.6 * (far - base)
            d = far - base
            normal = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-6)
            cv2.line(layer, tuple((mid - normal * L).astype(int)), tuple((mid + normal * L).astype(int)),
                     255, int(L * rng.uniform(0.18, 0.26)))
        elif phenotype == "spots" and fore:
            for t in rng.uniform(0.5, 0.9, rng.integers(2, 4)):
                p = base + t * (far - base) + rng.normal(0, L * 0.06, 2)
                cv2.circle(layer, tuple(p.astype(int)), int(L * rng.uniform(0.08, 0.11)), 255, -1)
        elif phenotype == "eyespots" and not fore:
            p = centre + 0.25 * (far - centre)
            r = int(L * rng.uniform(0.14, 0.18))
            cv2.circle(layer, tuple(p.astype(int)), r, 255, -1)
            cv2.circle(canvas, tuple(p.astype(int)), int(r * 0.55), (20, 20, 20), -1)
            cv2.circle(canvas, tuple(p.astype(int)), max(1, int(r * 0.2)), (250, 250, 250), -1)
        elif phenotype == "rays":
            for k in range(rng.integers(3, 5)):
                q = pts[int(len(pts) * (0.15 + 0.5 * k / 6))]
                cv2.line(layer, tuple(base.astype(int)), tuple(q.astype(int)), 255, max(2, int(0.06 * L)))
        elif phenotype == "margin":
            cv2.polylines(layer, [poly], True, 255, int(L * rng.uniform(0.16, 0.22)))
    wings = np.zeros_like(layer)
    for m in wing_masks.values():
        wings |= m
    paint = (layer > 0) & (wings > 0)
    canvas[paint] = colour
    return paint


def make_specimen(rng: np.random.Generator, phenotype: str, size: int = 128,
                  clutter: float = 0.5) -> Specimen:
    """Render one specimen at ``size`` x ``size`` (drawn at 2x and downsampled)."""
    S = size * 2
    bg = BACKGROUNDS[rng.integers(len(BACKGROUNDS))] + rng.normal(0, 6, 3)
    canvas = np.empty((S, S, 3), np.float32)
    canvas[:] = bg
    L = S * rng.uniform(0.34, 0.44)
    cx, cy = S / 2 + rng.normal(0, S * 0.04), S / 2 + rng.normal(0, S * 0.04)
    polys = _wing_polygons(rng, cx, cy, L)
    base_i, pat_i = rng.choice(len(PALETTE), 2, replace=False)
    base_col = np.clip(PALETTE[base_i] + rng.normal(0, 12, 3), 0, 255)
    pat_col = np.clip(PALETTE[pat_i] + rng.normal(0, 12, 3), 0, 255)
    labels = np.zeros((S, S), np.uint8)
    masks = {}
    for label in (3, 4, 1, 2):  # hindwings first: forewings overlap them
        m = np.zeros((S, S), np.uint8)
        cv2.fillPoly(m, [polys[label]], 255)
        masks[label] = m
        labels[m > 0] = label
        canvas[m > 0] = base_col * rng.uniform(0.9, 1.05)
    wing_img = canvas.copy()
    pattern = _pattern(rng, phenotype, masks, polys, wing_img, pat_col, L)
    canvas = np.where((labels > 0)[..., None], wing_img, canvas)
    for label, poly in polys.items():  # dark veins along the wing edge
        cv2.polylines(canvas, [poly], True, (35, 30, 30), max(1, S // 160))

    body = np.zeros((S, S), np.uint8)
    body_col = (40, 35, 30)
    cv2.ellipse(body, (int(cx), int(cy - 0.05 * L)), (int(0.07 * L), int(0.16 * L)), 0, 0, 360, 255, -1)
    cv2.ellipse(body, (int(cx), int(cy + 0.3 * L)), (int(0.05 * L), int(0.3 * L)), 0, 0, 360, 255, -1)
    cv2.circle(body, (int(cx), int(cy - 0.24 * L)), int(0.06 * L), 255, -1)
    for sign in (-1, 1):
        tip = (int(cx + sign * 0.35 * L), int(cy - 0.75 * L))
        cv2.line(body, (int(cx), int(cy - 0.28 * L)), tip, 255, max(1, S // 128))
        cv2.circle(body, tip, max(2, S // 90), 255, -1)
    canvas[body > 0] = body_col
    labels[body > 0] = 0
    foreground = (labels > 0) | (body > 0)

    if rng.random() < clutter:  # a pin through the thorax and a paper label: background
        cv2.line(canvas, (int(cx), int(cy - 0.05 * L)), (int(cx + 0.05 * S), int(cy - 0.02 * S)),
                 (90, 90, 95), max(1, S // 100))
        x0, y0 = int(rng.uniform(0.05, 0.6) * S), int(rng.uniform(0.84, 0.9) * S)
        cv2.rectangle(canvas, (x0, y0), (x0 + S // 4, y0 + S // 12), (245, 243, 230), -1)
        for k in range(3):
            yy = y0 + (k + 1) * S // 48
            cv2.line(canvas, (x0 + 4, yy), (x0 + S // 4 - 6, yy), (60, 60, 60), 1)
        covered = np.zeros((S, S), bool)
        covered[y0:y0 + S // 12, x0:x0 + S // 4] = True
        labels[covered], foreground[covered] = 0, False

    angle = rng.uniform(-25, 25)  # pose
    rot = cv2.getRotationMatrix2D((S / 2, S / 2), angle, 1.0)
    canvas = cv2.warpAffine(canvas, rot, (S, S), flags=cv2.INTER_LINEAR, borderValue=tuple(float(v) for v in bg))
    labels = cv2.warpAffine(labels, rot, (S, S), flags=cv2.INTER_NEAREST)
    warp = lambda m: cv2.warpAffine(m.astype(np.uint8), rot, (S, S), flags=cv2.INTER_NEAREST)  # noqa: E731
    foreground, pattern, body = warp(foreground) > 0, warp(pattern & (labels > 0)) > 0, warp(body) > 0

    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S  # lighting gradient and gain
    g = rng.uniform(-0.2, 0.2, 2)
    light = rng.uniform(0.8, 1.1) * (1 + g[0] * (xx - 0.5) + g[1] * (yy - 0.5))
    canvas = canvas * light[..., None] + rng.normal(0, 4, canvas.shape)
    image = cv2.resize(np.clip(canvas, 0, 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_AREA)
    wings = cv2.resize(labels, (size, size), interpolation=cv2.INTER_NEAREST)
    small = lambda m: cv2.resize(m.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0  # noqa: E731
    return Specimen(image, wings, small(foreground), phenotype, small(pattern), small(body))


def spectral_cube(spec: Specimen, n_bands: int, rng: np.random.Generator) -> np.ndarray:
    """A multispectral version of a specimen: ``(S, S, n_bands)`` float32 in [0, 1].

    Bands 0-2 are the specimen's RGB photo. Every further band shows each material (background,
    wing, pattern, body) with its own smooth reflectance spectrum, so the pattern also stands out
    (or hides) outside the visible range, as UV patterns do; lighting varies across the image.
    """
    size = spec.image.shape[0]
    extra = max(0, n_bands - 3)
    wl = np.linspace(0, 1, extra)[:, None]
    spectra = []  # per material: sum of 2 Gaussian bumps over the band axis, fixed by material
    for seed in range(4):
        g = np.random.default_rng(1000 + seed)
        centres, widths, heights = g.uniform(0, 1, 2), g.uniform(0.05, 0.3, 2), g.uniform(0.2, 0.8, 2)
        spectra.append(0.1 + (heights * np.exp(-0.5 * ((wl - centres) / widths) ** 2)).sum(1))
    material = np.zeros((size, size), np.int64)  # 0 background
    material[spec.wings > 0] = 1
    material[spec.pattern] = 2
    material[spec.body] = 3
    cube = np.stack(spectra)[material]  # (S, S, extra)
    yy, xx = np.mgrid[0:size, 0:size] / size
    light = rng.uniform(0.8, 1.1) * (1 + rng.uniform(-0.2, 0.2) * (xx - 0.5))
    cube = cube * light[..., None] + rng.normal(0, 0.02, cube.shape)
    rgb = spec.image.astype(np.float32) / 255
    return np.clip(np.concatenate([rgb, cube], -1)[..., :n_bands], 0, 1).astype(np.float32)


def write_specimen(path: Path, spec: Specimen, n_bands: int, rng: np.random.Generator) -> str:
    """Write the photo (3 bands: PNG), a 16-bit TIFF stack (< 32 bands) or a float .npy cube."""
    from .imageio import write_png

    if n_bands == 3:
        write_png(path.with_suffix(".png"), spec.image)
        return path.with_suffix(".png").name
    cube = spectral_cube(spec, n_bands, rng)
    suffix = ".tif" if n_bands < 32 else ".npy"
    with atomic_path(path.with_suffix(suffix)) as tmp:
        if suffix == ".tif":
            import tifffile

            tifffile.imwrite(tmp, np.round(np.moveaxis(cube, -1, 0) * 65535).astype(np.uint16))
        else:
            with open(tmp, "wb") as f:
                np.save(f, cube)
    return path.with_suffix(suffix).name


def generate(output: Path | str, n: int = 240, size: int = 128, seed: int = 0,
             phenotypes: tuple[str, ...] = PHENOTYPES, clutter: float = 0.5,
             n_bands: int = 3) -> "object":
    """Write ``n`` specimens (phenotypes in turn) and return the labels table (DataFrame).

    With ``n_bands`` > 3 the cluster folders hold multispectral stacks (see :func:`spectral_cube`):
    16-bit multi-page TIFFs below 32 bands, float32 ``.npy`` cubes from 32 bands on.
    """
    import pandas as pd

    from .imageio import write_png

    out = Path(output)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        ph = phenotypes[i % len(phenotypes)]
        spec = make_specimen(rng, ph, size, clutter)
        name = f"specimen_{i:05d}.png"
        write_png(out / "specimens" / name, spec.image)
        write_png(out / "masks" / name, spec.wings)
        write_png(out / "foreground" / name, spec.foreground.astype(np.uint8) * 255)
        stored = write_specimen(out / "clusters" / ph / name, spec, n_bands, rng)
        rows.append({"image": name, "phenotype": ph, "mask": f"masks/{name}", "cluster_file": f"{ph}/{stored}",
                     "wing_pixels": int((spec.wings > 0).sum())})
    table = pd.DataFrame(rows)
    write_csv(out / "labels.csv", table)
    write_manifest(out, "demo", {"n": n, "size": size, "seed": seed, "phenotypes": list(phenotypes),
                                 "bands": n_bands},
                   counts={"images": n}, seed=seed, wing_classes=list(WING_CLASSES))
    return table


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m wingclr.demo", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--output", type=Path, default=Path("work/demo"), help="output folder")
    p.add_argument("--n", type=int, default=240, help="number of specimens")
    p.add_argument("--size", type=int, default=128, help="image side (px)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same specimens)")
    p.add_argument("--clutter", type=float, default=0.5, help="probability of a pin and a paper label")
    p.add_argument("--bands", type=int, default=3,
                   help="bands of the cluster-folder images: 3 = PNG photos, e.g. 7 = 16-bit TIFF "
                        "stacks, e.g. 408 = float .npy hyperspectral cubes")
    return p


def main(argv=None) -> None:
    a = get_args_parser().parse_args(argv)
    generate(a.output, a.n, a.size, a.seed, clutter=a.clutter, n_bands=a.bands)
    print(f"wrote {a.n} specimens to {a.output} (specimens/, masks/, clusters/, labels.csv)")


if __name__ == "__main__":
    main()
