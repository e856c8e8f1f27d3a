"""Real specimens: does SimCLR from ImageNet beat the ImageNet features it starts from?

Data (skipped with a message when absent): ``../shared/data/papilionidae`` (688 museum photos of
345 swallowtail specimens, dorsal + ventral; the original pipeline's published 20-axis embeddings)
and ``../shared/data/butterflies`` (100 Leeds photos of 10 species + 14 Heliconius museum photos).

Methods, side by side on the same splits: pixel PCA, the backbone at random init, frozen
ImageNet, SimCLR from scratch, SimCLR from ImageNet with ``--recipe phenotype`` and with
``--recipe simclr`` (stage 3 run through its command line, as a user would), and on papilionidae
the published embeddings. SimCLR trains on every photo of a set (no labels: the same transductive
use as the pipeline's ``unlabeled/``).

Labels: papilionidae sex from the dorsal view (the original study measured sexual dimorphism),
genus and species (classes with >= 5 photos); butterflies source + species. Splits: 5-fold
StratifiedGroupKFold by specimen id (both views of a specimen on one side). Scores: stage 5's
linear probe (standardised features, L2 logistic regression, C chosen by CV on the training fold
only, here from 1e-4..10 in decades) and its cosine kNN (k = 20); mean +- sd over the 5 folds. Stage 1: ARI of HDBSCAN clusters (3-D UMAP)
against genus / species, frozen ImageNet Lite0 vs random VGG16 (what stage 1 gives without weights).

    python benchmarks/real_specimens.py                    # CPU budget: Lite0, 128 px, ~30 min on 2 cores
    python benchmarks/real_specimens.py --extra "gray0=--gray-prob 0" --extra "e20=--epochs 20"
    python benchmarks/real_specimens.py --input-size 224 --epochs 100 --batch-size 128 \\
        --backbone timm/efficientnet_lite0 --work work/bench/real-224   # GPU: the full-size version

Needs weights/timm/efficientnet_lite0.pth (``make weights``). Re-running reuses finished runs and
embeddings in --work.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"


def link_folders(data: Path, table: pd.DataFrame, cluster: str, out: Path) -> None:
    """Symlink each photo into ``out/unlabeled/<cluster>/`` (the data is never copied)."""
    for row in table.itertuples():
        link = out / "unlabeled" / re.sub(r"\W+", "_", getattr(row, cluster)) / Path(row.filename).name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink((data / row.filename).resolve(), link)


CLUSTERINGS = {
    "genus": "4 genera (94-299 photos): the benign case",
    "species": "93 species (2-16 photos): many small clusters",
    "skewed": "Parnassius as one cluster (299 photos, 43 %%), the other genera by species (50 clusters "
              "of 2-16): one big cluster and many tiny ones, as stage 1 gives on a real drawer",
}


def papilionidae_clusters(t: pd.DataFrame, how: str) -> pd.Series:
    """The cluster folders SimCLR trains on (they matter only to ``--balance``)."""
    if how == "genus":
        return t["genus"]
    if how == "species":
        return t["species"]
    return t["genus"].where(t["genus"] == "Parnassius", t["species"])


def load_sets(clusters: str = "genus") -> dict:
    """``{name: (data folder, table with filename, group, cluster and label columns, tasks)}``."""
    sets = {}
    pap = SHARED / "papilionidae"
    if (pap / "labels.csv").exists():
        t = pd.read_csv(pap / "labels.csv", dtype=str, keep_default_na=False)
        t["group"], t["cluster"] = t["id"], papilionidae_clusters(t, clusters)
        t["sex_dorsal"] = np.where(t["view"] == "D", t["sex"], "")
        counts = t["species"].value_counts()
        t["species5"] = np.where(t["species"].map(counts) >= 5, t["species"], "")
        sets["papilionidae"] = (pap, t, {"sex (dorsal)": "sex_dorsal", "genus": "genus",
                                         "species (>= 5 photos)": "species5"})
    but = SHARED / "butterflies"
    if (but / "labels.csv").exists():
        t = pd.read_csv(but / "labels.csv", dtype=str, keep_default_na=False)
        t["label"] = t["source"] + " " + t["species"]
        t["group"], t["cluster"] = t["filename"], t["label"]
        sets["butterflies"] = (but, t, {"source + species": "label"})
    return sets


def train(work: Path, name: str, args, *flags, seed: int = 0) -> Path:
    """Stage 3 through its command line; returns the finished run folder."""
    out = work / "3-training"
    cmd = [sys.executable, str(REPO / "3-training/train.py"), "--data", work, "--output", out,
           "--run-name", name, "--backbone", args.backbone, "--input-size", args.input_size,
           "--batch-size", args.batch_size, "--epochs", args.epochs, "--temperature", args.temperature,
           "--seed", seed, *flags]
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True)
    if proc.returncode:
        sys.exit(f"stage 3 failed for {name}:\n{proc.stderr[-3000:]}")
    print(f"  trained {name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out / name


def features(method: str, root: Path, images: list[str], args, run: Path | None = None) -> np.ndarray:
    """``(N, D)`` frozen features of ``root/<images>`` for one method (cached in ``root/..``)."""
    import torch

    from wingclr.train.checkpoint_files import load_backbone
    from wingclr.features import embed_images
    from wingclr.models import build_backbone, channel_stats

    cache = root.parent / "features" / f"{method}.npy"
    if cache.exists():
        return np.load(cache)
    size, backbone = args.input_size, args.backbone
    meta = {"in_chans": 3, "bands": None, "background": [255, 255, 255], "scale16": "full",
            "input_size": size}
    if run is not None:
        model, meta = load_backbone(run / f"{run.name}.ckpt")
    elif method == "pixel":
        model, size = torch.nn.Flatten(), args.pixel_size
        meta.update(input_size=size, mean=[0.0] * 3, std=[1.0] * 3)
    else:
        torch.manual_seed(args.seed)
        name = "vgg16" if method == "random_vgg16" else backbone
        model, _ = build_backbone(name, method == "imagenet", image_size=size)
        meta.update(dict(zip(("mean", "std"), channel_stats(3, [0, 1, 2], name))))
    x, ok = embed_images(model, meta, root, images, batch_size=32, num_workers=args.num_workers,
                         progress=False)
    assert ok.all(), f"unreadable: {np.asarray(images)[~ok][:3]}"
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, x)
    return x


def fold_scores(x, y, groups, seed: int, pixel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold linear-probe and kNN accuracy: stage 5's ``--protocol cv``, the one place it is
    done (:func:`wingclr.evaluate.folds.cross_validate`; 5 grouped folds, stage 5's probe)."""
    from wingclr.evaluate.folds import cross_validate

    result = cross_validate(x, y, groups, folds=5, seed=seed, pixel_pca=pixel, k=20, n_jobs=2)
    return result.linear, result.knn


def score(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int, pixel: bool) -> dict:
    """Linear probe and kNN accuracy over 5 grouped, stratified folds of the labelled rows."""
    keep = y != ""
    lin, knn = fold_scores(x, y, groups, seed, pixel)
    return {"linear": lin.mean(), "linear_sd": lin.std(), "knn": knn.mean(), "knn_sd": knn.std(),
            "n": int(keep.sum()), "classes": len(set(y[keep]))}


def cluster_ari(x: np.ndarray, truth: np.ndarray, seed: int) -> tuple[float, int]:
    """ARI of stage 1's clustering (PCA 50 -> 3-D UMAP -> HDBSCAN, min size 10) against ``truth``."""
    from sklearn.metrics import adjusted_rand_score

    from wingclr.cluster.clustering import cluster, project_umap

    emb = project_umap(x, seed=seed, pca_dims=50)
    result = cluster(emb, min_cluster_size=10, seed=seed)
    return adjusted_rand_score(truth, result.labels), int(result.n_clusters)


METHODS = {
    "pixel": "pixel PCA", "random": "random init", "imagenet": "frozen ImageNet",
    "simclr_scratch": "SimCLR from scratch (phenotype)",
    "simclr_imagenet_phenotype": "SimCLR from ImageNet, --recipe phenotype",
    "simclr_imagenet_simclr": "SimCLR from ImageNet, --recipe simclr",
    "published": "published embeddings (original pipeline, 224 px, GPU)",
}


def pooled(per_seed: list[dict]) -> dict:
    """Mean and sd over every (fold, seed) score from each seed's fold mean and (population) sd."""
    out = dict(per_seed[0])
    for key in ("linear", "knn"):
        means = np.array([r[key] for r in per_seed])
        sds = np.array([r[f"{key}_sd"] for r in per_seed])
        out[key], out[f"{key}_sd"] = means.mean(), float(np.sqrt(np.mean(sds ** 2 + (means - means.mean()) ** 2)))
        out[f"{key}_seeds"] = ";".join(f"{m:.4f}" for m in means)
    out["seeds"] = len(per_seed)
    return out


def run_set(name: str, data: Path, table: pd.DataFrame, tasks: dict, args) -> list[dict]:
    work = args.work / (name if name != "papilionidae" or args.clusters == "genus" else f"{name}-{args.clusters}")
    link_folders(data, table, "cluster", work)
    root = work / "unlabeled"
    images = [f"{re.sub(r'[^0-9A-Za-z_]+', '_', c)}/{Path(f).name}" for c, f in zip(table["cluster"], table["filename"])]
    assert all((root / i).exists() for i in images)
    runs = {"simclr_scratch": ("--pretrained", "none"),
            "simclr_imagenet_phenotype": ("--recipe", "phenotype"),
            "simclr_imagenet_simclr": ("--recipe", "simclr")}
    runs = {k: v for k, v in runs.items() if k.split("_")[-1] in args.runs.split(",")}
    for extra in args.extra:  # NAME=FLAGS: more stage 3 runs from ImageNet
        key, _, flags = extra.partition("=")
        runs[key] = tuple(shlex.split(flags))
        METHODS[key] = f"SimCLR from ImageNet, {flags}"
    feats = {m: [features(m, root, images, args)] for m in ("pixel", "random", "imagenet")}
    for method, flags in runs.items():
        feats[method] = []
        for seed in args.seeds:
            run_id = method if seed == 0 else f"{method}_seed{seed}"
            run = work / "3-training" / run_id
            if not (run / "manifest.json").exists():
                run = train(work, run_id, args, *flags, seed=seed)
            feats[method].append(features(run_id, root, images, args, run))
    if name == "papilionidae":
        pub = pd.read_csv(data / "seed_embeddings.csv").set_index("filename")
        feats["published"] = [pub.loc[table["filename"], [f"coord{i}" for i in range(20)]].to_numpy(np.float32)]
    rows = []
    for task, column in tasks.items():
        y, groups = table[column].to_numpy(), table["group"].to_numpy()
        for method, xs in feats.items():  # the same folds (args.seed) for every method and seed
            rows.append({"set": name, "clusters": args.clusters if name == "papilionidae" else "labels",
                         "task": task, "method": METHODS[method],
                         **pooled([score(x, y, groups, args.seed, method == "pixel") for x in xs])})
    feats = {k: v[0] for k, v in feats.items()}
    if args.ari:
        vgg = features("random_vgg16", root, images, args)
        for task, column in tasks.items():
            if column.startswith("sex"):
                continue
            truth, keep = table[column].to_numpy(), table[column].to_numpy() != ""
            for label, x in (("frozen ImageNet " + args.backbone, feats["imagenet"]), ("random VGG16", vgg)):
                ari, k = cluster_ari(x[keep], truth[keep], args.seed)
                rows.append({"set": name, "task": f"stage 1 ARI vs {task}", "method": label,
                             "linear": ari, "classes": k, "n": int(keep.sum())})
    return rows


def report(rows: pd.DataFrame) -> str:
    lines = []
    for (s, task), part in rows.groupby(["set", "task"], sort=False):
        lines.append(f"\n{s}: {task} ({part['n'].iloc[0]} photos, {part['classes'].iloc[0]} "
                     f"{'clusters found' if 'ARI' in task else 'classes'})")
        for r in part.itertuples():
            if "ARI" in task:
                lines.append(f"  {r.method:<58} ARI {r.linear:.3f} ({r.classes} clusters)")
            else:
                seeds = f"   ({r.seeds} seeds: {r.linear_seeds})" if r.seeds > 1 else ""
                lines.append(f"  {r.method:<58} linear {r.linear:.3f} +- {r.linear_sd:.3f}   "
                             f"kNN {r.knn:.3f} +- {r.knn_sd:.3f}{seeds}")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("work/bench/real-specimens"), help="working folder")
    p.add_argument("--backbone", default="timm/efficientnet_lite0", help="stage 3 --backbone")
    p.add_argument("--input-size", type=int, default=128, help="training and embedding size (px)")
    p.add_argument("--batch-size", type=int, default=64, help="SimCLR batch size")
    p.add_argument("--epochs", type=int, default=10, help="SimCLR epochs")
    p.add_argument("--temperature", type=float, default=0.5, help="NT-Xent temperature")
    p.add_argument("--pixel-size", type=int, default=32, help="pixel-PCA image side (px)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for embedding")
    p.add_argument("--sets", default="papilionidae,butterflies", help="data sets to run")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=FLAGS",
                   help="another stage 3 run, e.g. gray0='--recipe phenotype --gray-prob 0' (repeatable; "
                        "flags override the ones above)")
    p.add_argument("--no-ari", dest="ari", action="store_false", help="skip the stage 1 ARI part")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and UMAP")
    p.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1,2 (scores pooled over folds x seeds)")
    p.add_argument("--clusters", choices=sorted(CLUSTERINGS), default="genus",
                   help="papilionidae cluster folders: " + "; ".join(f"{k}: {v}" for k, v in CLUSTERINGS.items()))
    p.add_argument("--runs", default="scratch,phenotype,simclr",
                   help="built-in stage 3 runs to train (scratch, phenotype, simclr; '' for --extra only)")
    args = p.parse_args(argv)
    args.seeds = [int(v) for v in args.seeds.split(",")]
    sets = load_sets(args.clusters)
    if not sets:
        print(f"skipped: no data under {SHARED} (the shared specimen photos are not on this machine)")
        return
    t0 = time.perf_counter()
    rows = []
    for name in args.sets.split(","):
        if name in sets:
            print(f"{name} ...", flush=True)
            rows += run_set(name, *sets[name], args)
    table = pd.DataFrame(rows)
    args.work.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.work / "results.csv", index=False, float_format="%.4g")
    print(f"\n{args.backbone}, {args.input_size} px, batch {args.batch_size}, {args.epochs} epochs, "
          f"T={args.temperature}; 5 grouped folds, mean +- sd; {time.perf_counter() - t0:.0f} s in all")
    print(report(table))
    print(f"\nwrote {args.work / 'results.csv'}")


if __name__ == "__main__":
    main()
