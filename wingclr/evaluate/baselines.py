"""Baselines scored on the same train/validation split as the SimCLR runs (stage 5).

* ``pixel``: raw pixels (the run's reader, letterboxed to ``pixel_size``, flattened), PCA fitted
  on the training images only, then the same linear probe and kNN as the runs (the seed
  tutorials' "PCA + logistic regression" reference).
* ``imagenet``: the run's backbone with ImageNet weights, no SimCLR (weights through
  :mod:`wingclr.weights`; when the file is missing the baseline is reported as missing, never
  replaced by a random initialisation).
* ``random``: the run's backbone at random initialisation (seeded), no training: what SimCLR
  training has to beat.

Each baseline is computed once per dataset and setting and cached as
``<output>/baselines/<name>-<hash>.json`` (hash of the labelled split and the settings).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..cli import UserError
from ..outputs import write_text
from ..probe import C_GRID, CLEAR_MARGIN, score_split
from .folds import score_cv

BASELINES = {"pixel": "pixel_pca", "imagenet": "imagenet", "random": "random_init"}
DEFAULT_BASELINES = ("pixel", "imagenet")


@dataclass
class SplitData:
    """The labelled images of one dataset, as seen by the probe.

    Attributes:
        root: folder the image paths are relative to.
        images: ``(N,)`` relative image paths (all embedded images, outliers included).
        y: ``(N,)`` class per image ('' = no class: excluded from probe and cluster quality).
        train, val: ``(N,)`` bool masks of the training and validation rows (``--protocol
            cv``: both are every scored row, each scored once in its own fold).
        groups: ``(N,)`` group (specimen) per row: the folds keep each group together.
        protocol: ``split`` (stage 2's train/validation) or ``cv`` (grouped k-fold).
        folds: folds asked for (``cv``).
    """

    root: Path | None
    images: np.ndarray
    y: np.ndarray
    train: np.ndarray
    val: np.ndarray
    groups: np.ndarray | None = None
    protocol: str = "split"
    folds: int = 0

    def key(self) -> str:
        """Hash of the labelled rows (image, class, split or group): equal for runs on the same
        split (or the same folds: ``cv`` rows also hash their group and the number of folds)."""
        if self.protocol == "cv":
            rows = sorted(f"{i}\t{c}\t{g}" for i, c, g, t in
                          zip(self.images, self.y, self.groups, self.train) if t)
            rows.append(f"cv {self.folds}")
        else:
            rows = sorted(f"{i}\t{c}\t{'t' if t else 'v'}" for i, c, t, v in
                          zip(self.images, self.y, self.train, self.val) if t or v)
        return hashlib.sha1("\n".join(rows).encode()).hexdigest()[:12]

    def scored(self, ok: np.ndarray | None = None) -> "SplitData":
        """The same split without the rows where ``ok`` is False (images unreadable now)."""
        if ok is None:
            return self
        return SplitData(self.root, self.images, self.y, self.train & ok, self.val & ok,
                         self.groups, self.protocol, self.folds)


def score_features(feats: np.ndarray, split: SplitData, seed: int = 0, k: int = 20,
                   pixel_pca: bool = False) -> tuple[dict, dict[str, Any]]:
    """Score features on ``split`` by its protocol.

    Args:
        feats: ``(N, D)`` features of every row of ``split``.
        pixel_pca: ``cv`` only: PCA fitted inside each training part (the pixel baseline).

    Returns:
        ``(metrics, predictions)``: metrics as :func:`wingclr.probe.score_split` (``cv``:
        :func:`wingclr.evaluate.folds.score_cv`); predictions ``{"rows", "linear", "knn",
        "fold", "C"}``: the scored rows (``(M,)`` indices) and their predictions (``split``: the
        validation rows; ``cv``: every scored row, out of fold), the fold of each (``split``:
        none) and the probe strength to refit with.
    """
    if split.protocol == "cv":

        # rows in image order: the probe's inner folds (and so C) must not depend on how a
        # spreadsheet sorted embeddings.csv
        order = np.argsort(np.asarray(split.images, str), kind="stable")
        y = np.where(split.train, split.y, "")[order]
        metrics, r = score_cv(np.asarray(feats)[order], y, np.asarray(split.groups)[order],
                              folds=split.folds, seed=seed, k=k, pixel_pca=pixel_pca)
        scored = np.flatnonzero(r.fold >= 0)
        rows = order[scored]
        keep = np.argsort(rows, kind="stable")  # back to the table's order
        return metrics, {"rows": rows[keep], "linear": r.pred_linear[scored][keep],
                         "knn": r.pred_knn[scored][keep], "fold": r.fold[scored][keep],
                         "C": metrics["probe_C"]}
    metrics, probe, knn = score_split(feats, split.y, split.train, split.val, seed, k)
    return metrics, {"rows": np.flatnonzero(split.val), "linear": probe.predictions, "knn": knn,
                     "fold": None, "C": probe.C}


def parse_baselines(text: str) -> tuple[str, ...]:
    """``"pixel,imagenet"`` -> ``("pixel", "imagenet")``; ``""`` or ``"none"`` -> ``()``."""
    names = tuple(n.strip() for n in text.split(",") if n.strip() and n.strip() != "none")
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise UserError(f"unknown baseline {unknown[0]!r} in --baselines; choose from "
                        f"{', '.join(BASELINES)} (comma-separated) or none")
    return names


def baseline_settings(method: str, meta: dict, split_key: str, pixel_size: int, seed: int,
                      k: int) -> dict:
    """Everything that determines a baseline's numbers (its cache key)."""
    reading = {f: meta.get(f) for f in ("in_chans", "bands", "background", "scale16")}
    # collapse_margin: caches from before probe-collapse detection lack probe_collapsed
    s = {"method": method, "dataset": split_key, "seed": seed, "knn_k": k,
         "c_grid": [float(c) for c in C_GRID], "collapse_margin": CLEAR_MARGIN, **reading}
    if method == "pixel":
        return {**s, "input_size": pixel_size, "max_components": 100}
    return {**s, "backbone": meta["backbone"], "input_size": meta["input_size"],
            "rgb_bands": meta.get("rgb_bands"), "mean": meta["mean"], "std": meta["std"]}


def describe(spec: dict) -> str:
    """Row label of a baseline, e.g. ``ImageNet resnet18 (64 px)``."""
    size = f"({spec['input_size']} px)"
    if spec["method"] == "pixel":
        return f"pixel PCA {size}"
    kind = "ImageNet" if spec["method"] == "imagenet" else "random-init"
    return f"{kind} {spec['backbone']} {size}"


def baseline_model(method: str, meta: dict, seed: int):
    """The frozen network behind a baseline: ``(B, C, S, S)`` float -> ``(B, D)``.

    Raises:
        UserError: ``imagenet`` and the weights file is not available.
    """
    import torch

    from ..models import build_backbone

    if method == "pixel":
        return torch.nn.Flatten()
    torch.manual_seed(seed)  # random init: the same network for every run and call
    # stage 5 has no --backbone or --pretrained: the baseline uses the run's backbone
    model, _ = build_backbone(meta["backbone"], method == "imagenet", meta["in_chans"],
                              meta.get("rgb_bands") or [], meta["input_size"],
                              advice="or leave imagenet out of --baselines", alternatives=False)
    return model


def baseline_features(method: str, meta: dict, split: SplitData, pixel_size: int = 32,
                      seed: int = 0, device: str = "auto", num_workers: int | None = None,
                      model=None, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Features of every image for one baseline.

    Args:
        model: the network of :func:`baseline_model` when already built.

    Returns:
        ``(features (N, D) float32, ok (N,) bool)``; ok is False for images that cannot be read.
    """
    from ..features import embed_images

    if method == "pixel":  # pixels in [0, 1]: no normalisation, the PCA centres them
        c = meta["in_chans"]
        meta = {**meta, "input_size": pixel_size, "mean": [0.0] * c, "std": [1.0] * c}
    model = baseline_model(method, meta, seed) if model is None else model
    feats, ok = embed_images(model, meta, split.root,
                             list(split.images), num_workers=num_workers, device=device,
                             progress=progress)
    usable = split.train & ok
    if usable.sum() < 2 or not (split.val & ok).any():
        raise UserError(f"{int(ok.sum())} of {len(ok)} images in {split.root} can be read now "
                        "(moved or deleted since stage 4?); pass --data <the stage 2 folder they "
                        "were embedded from>")
    if method == "pixel" and split.protocol != "cv":  # cv: PCA fitted inside each fold
        from sklearn.decomposition import PCA

        fit = split.train & ok
        n = min(100, int(fit.sum()) - 1, feats.shape[1])
        pca = PCA(n_components=max(1, n), svd_solver="full", random_state=seed).fit(feats[fit])
        feats = pca.transform(feats).astype(np.float32)
    return feats, ok


def run_baseline(method: str, meta: dict, split: SplitData, cache_dir: Path, pixel_size: int = 32,
                 seed: int = 0, k: int = 20, device: str = "auto",
                 num_workers: int | None = None) -> dict:
    """Score one baseline on ``split`` (cached).

    Returns:
        ``{"name", "label", "settings", "metrics"}``; metrics as :func:`wingclr.probe.score_split`.

    Raises:
        UserError: the baseline cannot be computed (missing weights or image folder).
    """
    spec = baseline_settings(method, meta, split.key(), pixel_size, seed, k)
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    cache = Path(cache_dir) / f"{BASELINES[method]}-{digest}.json"
    if cache.exists():
        try:
            cached = json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cached = None
        if isinstance(cached, dict) and isinstance(cached.get("metrics"), dict):
            return cached
        print(f"note: {cache} is damaged; computing the baseline again")
    if split.root is None or not Path(split.root).is_dir():
        where = f"image folder {split.root}" if split.root else "the folder the run was embedded from"
        raise UserError(f"{where} not found; pass --data <stage 2 folder>")
    model = baseline_model(method, meta, seed)  # fails first when weights are missing
    label = describe(spec)
    print(f"baseline: {label} ...")
    feats, ok = baseline_features(method, meta, split, pixel_size, seed, device, num_workers, model)
    bad = (split.train | split.val) & ~ok
    if bad.any():  # read fine in stage 4, not now: score without them, do not cache
        print(f"note: {label}: {int(bad.sum())} image(s) unreadable now, scored without them "
              f"(first: {Path(split.root) / split.images[bad][0]})")
    metrics, _ = score_features(feats, split.scored(ok), seed, k, pixel_pca=method == "pixel")
    result = {"name": BASELINES[method], "label": label, "settings": spec, "metrics": metrics}
    if not bad.any():
        write_text(cache, json.dumps(result, indent=2) + "\n")
    return result
