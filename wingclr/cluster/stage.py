"""Stage 1: image folder -> VGG16 features -> 3-D UMAP -> HDBSCAN, with the keep-or-retry loop.

Modes (see ``1-clustering/cluster.py --help``):

* interactive (stdin is a terminal, or ``--interactive``): asks min_cluster_size and
  cluster_selection_epsilon, shows the result, then "keep (1) or retry (0)"; a retry reuses the
  features and the UMAP embedding, so only HDBSCAN runs again;
* batch (``--yes``, or both parameters given without a terminal): one pass, no questions;
* ``--sweep`` alone without a terminal: prints the parameter table and stops.

Without a terminal and without parameters the stage stops with an error naming the flags.

Random (untrained) features group images by colour and pose, not by pattern, yet UMAP still
separates them into convincing clusters; ``--pretrained none`` is therefore refused unless
``--allow-random-features`` is given too, and then every result is printed with a warning and the
manifest records ``"random_features": true``. The silhouette is printed and recorded both in the
3-D UMAP space and in the feature space.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..cli import UserError, check_input_size, check_minimum, require_output_folder
from ..contact_sheets import write_contact_sheets
from ..identity import COLUMNS, identify, segmentation_identity, stamp_files, write_inputs
from ..imageio import list_files
from ..outputs import MANIFEST, atomic_path, place_file, write_csv, write_manifest, write_text
from .clustering import (OUTLIERS, Clustering, cluster, folder_name, identical_rows, project_umap,
                         sweep, sweep_grid)
from .inputs import (check_random_features, guard_output, input_changed_error,
                     random_features_warning, resolve_input, stage_settings,
                     with_weights_advice)
from .figures import display_available, plot_silhouette, plot_umap_3d, show_figures
from .settings import ClusterSettings

DEFAULT_MIN_CLUSTER_SIZE, DEFAULT_EPSILON = 20, 0.0
MIN_IMAGES = 5  # UMAP needs a few points to build a neighbour graph

TRIES = ".tries"  # the pictures of tries while a finished clustering is being overwritten
UMAP_KEYS = ("n_neighbors", "min_dist", "seed", "metric", "pca_dims")
BATCH_HINT = "--min-cluster-size N --cluster-selection-epsilon E --yes"


def decide_mode(s: ClusterSettings, *, stdin_is_tty: bool) -> str:
    """``"interactive"``, ``"batch"`` or ``"sweep-only"`` (batch mode's defaults:
    :func:`with_batch_defaults`).

    Raises:
        UserError: no terminal to ask on and the parameters are not given.
    """
    if s.yes and s.interactive:
        raise UserError("--yes and --interactive exclude each other; pass one of them")
    given = s.min_cluster_size is not None and s.cluster_selection_epsilon is not None
    if s.interactive or (stdin_is_tty and not s.yes):
        return "interactive"
    if s.yes or given:
        return "batch"
    if s.sweep:
        return "sweep-only"
    raise UserError("stdin is not a terminal, so min_cluster_size and cluster_selection_epsilon "
                    f"cannot be asked: pass {BATCH_HINT} (e.g. --min-cluster-size 20 "
                    "--cluster-selection-epsilon 0.1 --yes), or --sweep to print a table to choose "
                    "from, or --interactive to answer on piped stdin")


def with_batch_defaults(s: ClusterSettings) -> ClusterSettings:
    """``s`` with the HDBSCAN parameters not given set to batch mode's defaults: they are
    settings of the output (recorded in manifest.json, compared on a re-run)."""
    mcs, eps = s.min_cluster_size, s.cluster_selection_epsilon
    return replace(s, min_cluster_size=DEFAULT_MIN_CLUSTER_SIZE if mcs is None else mcs,
                   cluster_selection_epsilon=DEFAULT_EPSILON if eps is None else eps)


def stdin_isatty() -> bool:
    try:
        return bool(sys.stdin is not None and sys.stdin.isatty())
    except (AttributeError, OSError, ValueError):  # closed or replaced stdin
        return False


def ask(prompt: str, default, parse, check=lambda v: True, expected: str = "a number"):
    """Ask on stdin until the answer parses and passes ``check``; Enter takes ``default``."""
    while True:
        suffix = f" [{default}]" if default is not None else ""
        try:
            text = input(f"{prompt}{suffix}: ").strip()
        except EOFError:
            print()
            raise UserError(f"stdin ended before '{prompt}' was answered; to run without questions "
                            f"pass {BATCH_HINT}") from None
        if not text and default is not None:
            return default
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is not None and check(value):
            return value
        print(f"please enter {expected}")


def umap_embedding(features: np.ndarray, s: ClusterSettings, *, out: Path) -> np.ndarray:
    """The ``(N, 3)`` UMAP embedding, reused from ``umap_3d.npy`` when features and parameters match.

    Computed once per run: a retry only re-runs HDBSCAN; a re-run (e.g. with ``--overwrite`` and
    other HDBSCAN parameters) reads it back.
    """
    params = {k: getattr(s, k) for k in UMAP_KEYS}
    digest = hashlib.blake2b(np.ascontiguousarray(features).data, digest_size=16).hexdigest()
    key = json.dumps({**params, "features": digest}, sort_keys=True)
    try:
        if (out / "umap_3d.json").read_text(encoding="utf-8") == key:
            emb = np.load(out / "umap_3d.npy")
            if emb.shape == (len(features), 3):
                print("UMAP: reusing umap_3d.npy (same features and parameters)")
                return emb
    except (OSError, ValueError):
        pass
    print(f"UMAP: {features.shape[0]} x {features.shape[1]} -> 3-D ({', '.join(f'{k}={v}' for k, v in params.items())})",
          flush=True)
    start = time.perf_counter()
    emb = project_umap(features, **params)
    print(f"UMAP: {time.perf_counter() - start:.1f} s")
    with atomic_path(out / "umap_3d.npy") as tmp:
        np.save(tmp, emb)
    write_text(out / "umap_3d.json", key)
    return emb


def choose(embedding: np.ndarray, s: ClusterSettings, *, mode: str, out: Path,
           degenerate: bool, show: bool, features: np.ndarray | None = None, warning: str = "",
           images: list[Path] | None = None) -> tuple[Clustering, list[dict], tuple[int, float]]:
    """Cluster, report and plot until the user keeps a result (one pass in batch mode).

    The HDBSCAN parameters given in ``s`` are the first answers offered in interactive
    mode (the ones used in batch mode). ``features`` (the rows of ``embedding``) add the
    feature-space silhouette; ``warning`` is printed after every result (random features); with
    ``images`` (the files of the rows), every try also draws a contact sheet per cluster,
    ``out/sheet_cluster_<k>.png`` (beside the plots, not in a folder: stage 2 reads every folder of
    ``out`` as a cluster).

    Returns:
        The kept result, every tried result's summary (in order), and the kept result's
        ``(min_cluster_size, cluster_selection_epsilon)``.
    """
    n = len(embedding)
    mcs, eps = s.min_cluster_size, s.cluster_selection_epsilon
    mcs = min(DEFAULT_MIN_CLUSTER_SIZE, n) if mcs is None else mcs
    eps = DEFAULT_EPSILON if eps is None else eps
    tried = []
    while True:
        if mode == "interactive":
            mcs = ask("min_cluster_size", mcs, int, lambda v: 2 <= v <= n,
                      f"a whole number from 2 to {n} (the number of images)")
            eps = ask("cluster_selection_epsilon", eps, float, lambda v: v >= 0, "a number >= 0")
        result = cluster(embedding, mcs, eps, s.min_samples, s.seed, degenerate,
                         features=features, metric=s.metric)
        tried.append(result.record())
        print(result.summary())
        if warning:
            print(warning)
        if result.silhouette is None:
            print(result.note)
        figures = [plot_umap_3d(embedding, result, out / "umap_3d.png", show),
                   plot_silhouette(result, out / "silhouette.png", show)]
        print(f"plots: {out / 'umap_3d.png'}, {out / 'silhouette.png'}")
        if images is not None:
            draw_sheets(embedding if features is None else features, result.labels, images, out)
        if show:
            show_figures(figures)
        if mode != "interactive" or ask("keep (1) or retry (0)", None, int, lambda v: v in (0, 1),
                                        "1 to keep or 0 to retry"):
            return result, tried, (mcs, eps)


def draw_sheets(features: np.ndarray, labels: np.ndarray, images: list[Path], folder: Path) -> None:
    """One contact sheet per cluster (nearest its centre first) and one of the outliers, replacing
    the previous try's; pictures never fail the stage."""
    try:

        for old in folder.glob("sheet_*.png"):
            old.unlink()
        files = write_contact_sheets(features, [folder_name(k) for k in labels], images, folder)
        print(f"contact sheets (nearest the cluster centre first, outliers apart): {folder}/ "
              f"({len(files)} files)")
    except Exception as e:  # noqa: BLE001
        print(f"note: contact sheets not drawn ({type(e).__name__}: {e})")


def move_pictures(tries: Path, out: Path) -> None:
    """Replace ``out``'s plots and contact sheets with those of the kept try drawn in ``tries``."""
    for old in out.glob("sheet_*.png"):
        old.unlink()
    for picture in sorted(tries.glob("*.png")):
        picture.replace(out / picture.name)
    shutil.rmtree(tries, ignore_errors=True)


def write_clusters(out: Path, root: Path, images: list[str], result: Clustering,
                   embedding: np.ndarray, link: str, identity: pd.DataFrame | None = None) -> pd.DataFrame:
    """``cluster_<k>/<rel>``, ``outliers/<rel>`` and ``clusters.csv``; returns the table.

    ``cluster`` in ``clusters.csv`` is the image's folder (``cluster_0``, ``outliers``), the
    spelling of ``split.csv``, ``embeddings.csv`` and ``predictions.csv``, so the tables join.
    ``identity``: ``specimen``, ``source_image`` and ``group`` per image (:mod:`wingclr.identity`),
    the last columns of ``clusters.csv`` (default: from the paths).
    """
    for old in [*out.glob("cluster_*"), out / OUTLIERS]:  # our own folders of an unfinished run
        if old.is_dir():
            shutil.rmtree(old)
    folders = [folder_name(k) for k in result.labels]
    for rel, folder in zip(images, folders):
        place_file(root / rel, out / folder / rel, link)
    table = pd.DataFrame({"image": images, "cluster": folders,
                          "probability": np.round(result.probabilities, 4)})
    for i in range(3):
        table[f"umap_{i + 1}"] = np.round(embedding[:, i], 5)
    ids = identify(images, None) if identity is None else identity
    for column in COLUMNS:
        table[column] = ids[column].to_numpy()
    write_csv(out / "clusters.csv", table)
    return table


def wrote_line(result: Clustering, out: Path) -> str:
    """What :func:`write_clusters` wrote, naming only the folders it made."""
    outliers = f", {OUTLIERS}/ ({result.n_outliers} images)" if result.n_outliers else ""
    return (f"wrote {result.n_clusters} cluster folder{'s' * (result.n_clusters != 1)} "
            f"(cluster_0 the largest){outliers} and clusters.csv to {out}")


def check_clustering(s: ClusterSettings, *, stdin_is_tty: bool) -> tuple[ClusterSettings, str, bool, Path]:
    """Stage 1's flags, the mode and the input folder, checked before any image is read.

    Returns:
        ``(settings, mode, random_features, input root)``: in batch mode the settings carry the
        batch defaults; ``random_features`` is True when ``--pretrained none`` is allowed.
    """
    check_minimum(("--min-cluster-size", s.min_cluster_size, 2),
                  ("--cluster-selection-epsilon", s.cluster_selection_epsilon, 0),
                  ("--min-samples", s.min_samples, 1),
                  ("--n-neighbors", s.n_neighbors, 2), ("--min-dist", s.min_dist, 0),
                  ("--batch-size", s.batch_size, 1), ("--pca-dims", s.pca_dims, 0))
    check_input_size(s.input_size)
    random_features = check_random_features(
        pretrained=s.pretrained, allow_random_features=s.allow_random_features,
        backbone=s.backbone)
    mode = decide_mode(s, stdin_is_tty=stdin_is_tty)
    if mode == "batch":
        s = with_batch_defaults(s)
    require_output_folder(Path(s.output))
    return s, mode, random_features, resolve_input(s.input, Path(s.output))


def check_image_count(n: int, s: ClusterSettings, root: Path) -> None:
    """Enough images in ``root`` for UMAP and for ``--min-cluster-size``."""
    if n < max(MIN_IMAGES, s.min_cluster_size or 0):
        need = (f"fewer than --min-cluster-size {s.min_cluster_size}; pass a smaller "
                f"--min-cluster-size (at most {n})") if n >= MIN_IMAGES else (
                f"clustering needs at least {MIN_IMAGES}; add images or point --input elsewhere")
        raise UserError(f"{root} holds {n} image{'s' * (n != 1)}, {need}")


def check_readable(readable: int, n: int, s: ClusterSettings, root: Path) -> None:
    """Enough readable images (after feature extraction) for the clustering flags."""
    if readable < max(MIN_IMAGES, s.min_cluster_size or 0):
        raise UserError(f"only {readable} of the {n} images in {root} are readable; fix or "
                        "remove the files listed above, or pass a smaller --min-cluster-size")
    if s.min_samples is not None and s.min_samples > readable:
        raise UserError(f"--min-samples {s.min_samples} is more than the {readable} "
                        f"readable images in {root}; pass a smaller --min-samples")


def run_clustering(s: ClusterSettings, *, stdin_is_tty: bool | None = None,
                   builder=None) -> dict | None:
    """Run stage 1 (``ClusterSettings.from_args`` of ``1-clustering/cluster.py``'s arguments).

    Args:
        stdin_is_tty: whether questions can be asked (default: ``sys.stdin.isatty()``).
        builder: backbone factory override (tests count forward passes with it).

    Returns:
        The manifest, or None when skipped (same finished output) or after a sweep-only run.
    """
    from ..data import dataset_channels
    from ..features import FeatureConfig, compute_features, default_workers
    from ..models import build_backbone

    s, mode, random_features, root = check_clustering(
        s, stdin_is_tty=stdin_isatty() if stdin_is_tty is None else stdin_is_tty)
    out = Path(s.output)
    finished = guard_output(out, s, mode=mode)
    images, skipped = list_files(root)
    stamps = stamp_files(root, images)  # recorded at the end: what this clustering is made of
    if finished:
        error = input_changed_error(out, stamps)
        if error:
            raise error
        print(f"skip: {out} already holds this clustering (manifest.json); pass --overwrite to redo it")
        return None
    n = len(images)
    check_image_count(n, s, root)
    # a finished clustering being overwritten stays whole until the new one is kept: the tries'
    # pictures go to a hidden folder (stage 2 ignores it) and the manifest goes just before writing
    tries = out / TRIES if (out / MANIFEST).is_file() and mode != "sweep-only" else out

    # ============ features: the backbone's vectors, cached in the output folder ============
    config = FeatureConfig(s.backbone, s.pretrained == "imagenet", s.input_size,
                           dataset_channels(root, images, None), tuple(s.background),
                           s.seed)
    workers = default_workers() if s.num_workers is None else s.num_workers
    feats = compute_features(root, images, out, config, s.batch_size, workers,
                             s.device, not s.quiet,
                             builder=with_weights_advice(builder or build_backbone))
    print(f"features: {n - feats.computed} from the cache, {feats.computed} computed ({s.backbone}, "
          f"{'ImageNet' if config.pretrained else 'random'} weights) -> {out / 'features.npy'}")
    unreadable = [(images[i].as_posix(), feats.errors[i]) for i in np.flatnonzero(~feats.ok)]
    skipped = [(p.as_posix(), r) for p, r in skipped] + unreadable
    for path, reason in skipped:
        print(f"skipped: {path}: {reason}")
    ok = feats.ok
    readable = [images[i].as_posix() for i in np.flatnonzero(ok)]
    check_readable(len(readable), n, s, root)
    values, computed = (feats.values if ok.all() else feats.values[ok]), feats.computed
    del feats  # the readable rows are all that is kept

    # ============ UMAP: 3-D projection (none when every image gives the same vector) ============
    degenerate = identical_rows(values)
    embedding = (np.zeros((len(values), 3), np.float32) if degenerate
                 else umap_embedding(values, s, out=out))
    if degenerate:
        print(f"all {len(values)} images give identical features (duplicate images?): nothing to "
              "project or separate; they form one cluster and the silhouette is undefined")

    # ============ sweep (--sweep): HDBSCAN over a grid of settings, a table to choose from ============
    if s.sweep:
        grid = sweep_grid(s.min_cluster_size or min(DEFAULT_MIN_CLUSTER_SIZE, len(values)),
                          len(values), s.cluster_selection_epsilon)
        table = sweep(embedding, grid, s.min_samples, s.seed, degenerate)
        print(table.to_string(index=False, na_rep="undefined"))
        print("(silhouette: in the 3-D UMAP space, outliers left out)")
        write_csv(out / "sweep.csv", table)
        print(f"sweep table: {out / 'sweep.csv'}")
        if mode == "sweep-only":
            print(f"pick a row and run again with {BATCH_HINT}")
            return None

    # ============ HDBSCAN: the clustering kept (batch values, or the interactive answers) ============
    show = not s.no_show and display_available()
    warning = random_features_warning(s.backbone) if random_features else ""
    result, tried, (mcs, eps) = choose(
        embedding, s, mode=mode, out=tries, degenerate=degenerate, show=show,
        features=None if degenerate else values, warning=warning, images=[root / r for r in readable])

    # ============ write: cluster folders, clusters.csv, pictures, inputs.csv, manifest (last) ============
    (out / MANIFEST).unlink(missing_ok=True)  # kept: from here on the output is unfinished
    if tries != out:
        move_pictures(tries, out)
    # manifest.json records the parameters of the result kept (the answers, in interactive mode)
    s = replace(s, min_cluster_size=mcs, cluster_selection_epsilon=eps)
    known = segmentation_identity(root)
    identity = identify(readable, known, source="stage 0's segmentation.csv" if known else "")
    write_clusters(out, root, readable, result, embedding, s.link, identity)
    print(wrote_line(result, out))
    if warning:
        print(warning)
    write_inputs(out, stamps)
    return write_manifest(
        out, "1-clustering", stage_settings(s), seed=s.seed,
        packages=("umap-learn", "hdbscan", "scikit-learn"),
        counts={"images": n, "clustered": len(readable), "clusters": result.n_clusters,
                "outliers": result.n_outliers, "unreadable": len(unreadable),
                "skipped": len(skipped), "features_computed": computed},
        silhouette=result.silhouette, silhouette_note=result.note, silhouette_umap=result.silhouette,
        silhouette_features=result.feature_silhouette, silhouette_metric=s.metric,
        random_features=random_features,
        cluster_sizes={folder_name(k): n for k, n in result.sizes.items()},
        tried=tried, skipped_files=skipped, input=str(root.resolve()),
        features={**config.key(), "dim": int(values.shape[1])})
