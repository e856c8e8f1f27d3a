"""Stage 1 quality: adjusted Rand index (ARI) of the clusters vs. the true phenotypes.

Generates specimens (wingclr.demo: 5 wing-pattern phenotypes, varied pose, colour and lighting),
runs 1-clustering/cluster.py non-interactively with random-init VGG16 features, and with ImageNet
VGG16 features when weights/vgg16-397923af.pth is present (otherwise reported as unavailable).
Prints ARI over all images (outliers as one group), over clustered images only, and for every
row of the (min_cluster_size x epsilon) sweep on the same UMAP embedding.

    python benchmarks/clustering_ari.py                          # 250 specimens, 96 px
    python benchmarks/clustering_ari.py --n 500 --size 128 --input-size 224
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def ari_report(out_dir: Path, labels_csv: Path) -> dict:
    """ARI of ``out_dir/clusters.csv`` against ``labels_csv`` (columns image, phenotype)."""
    from sklearn.metrics import adjusted_rand_score

    clusters = pd.read_csv(Path(out_dir) / "clusters.csv", dtype={"image": str, "cluster": str})
    labels = pd.read_csv(labels_csv, dtype={"image": str})[["image", "phenotype"]]
    table = clusters.merge(labels, on="image", how="inner")
    outlier = table.cluster.isin(["outliers", "-1"])  # stage 1 wrote -1 before the folder name
    kept = table[~outlier]
    return {"images": len(table), "clusters": int(kept.cluster.nunique()),
            "outliers": int(outlier.sum()),
            "ari_all": adjusted_rand_score(table.phenotype, table.cluster),
            "ari_clustered": adjusted_rand_score(kept.phenotype, kept.cluster) if len(kept) else float("nan")}


def sweep_ari(out_dir: Path, labels_csv: Path, min_cluster_size: int, seed: int) -> pd.DataFrame:
    """ARI and silhouette for each sweep grid point on the run's cached UMAP embedding."""
    from sklearn.metrics import adjusted_rand_score

    from wingclr.cluster.clustering import cluster, sweep_grid

    clusters = pd.read_csv(Path(out_dir) / "clusters.csv", dtype={"image": str})
    truth = clusters.merge(pd.read_csv(labels_csv, dtype={"image": str}), on="image", how="left").phenotype
    emb = np.load(Path(out_dir) / "umap_3d.npy")
    rows = []
    for m, e in sweep_grid(min_cluster_size, len(emb)):
        result = cluster(emb, m, e, seed=seed)
        rows.append({**result.record(), "ari_all": round(adjusted_rand_score(truth, result.labels), 3)})
    return pd.DataFrame(rows)


def run_stage1(specimens: Path, out: Path, pretrained: bool, args) -> dict | str:
    spec = importlib.util.spec_from_file_location("cluster", REPO / "1-clustering" / "cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from wingclr.cli import UserError
    from wingclr.cluster.settings import ClusterSettings
    from wingclr.cluster.stage import run_clustering

    argv = ["--input", specimens, "--output", out, "--input-size", args.input_size,
            "--min-cluster-size", args.min_cluster_size, "--cluster-selection-epsilon", args.epsilon,
            "--pretrained", "imagenet" if pretrained else "none", "--yes", "--no-show", "--quiet",
            "--metric", args.metric, "--seed", args.seed, *([] if pretrained else ["--allow-random-features"])]
    start = time.perf_counter()
    try:
        parsed = module.get_args_parser().parse_args([str(a) for a in argv])
        run_clustering(ClusterSettings.from_args(parsed), stdin_is_tty=False)
    except UserError as e:
        return f"unavailable ({e})"
    return {**ari_report(out, specimens.parent / "labels.csv"), "seconds": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=250, help="specimens (5 phenotypes in turn)")
    p.add_argument("--size", type=int, default=96, help="specimen image side (px)")
    p.add_argument("--input-size", type=int, default=128, help="network input side (px)")
    p.add_argument("--min-cluster-size", type=int, default=None, help="default n / 10")
    p.add_argument("--epsilon", type=float, default=0.0, help="cluster_selection_epsilon")
    p.add_argument("--metric", default="euclidean", help="UMAP metric")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=None, help="keep outputs here (default: temp)")
    args = p.parse_args()
    args.min_cluster_size = args.min_cluster_size or max(2, args.n // 10)
    from wingclr.demo import generate

    work = args.work or Path(tempfile.mkdtemp(prefix="clustering-ari-"))
    generate(work / "demo", n=args.n, size=args.size, seed=args.seed)
    print(f"{args.n} specimens ({args.size} px, 5 phenotypes) -> VGG16 ({args.input_size} px) -> "
          f"UMAP 3-D -> HDBSCAN(min_cluster_size={args.min_cluster_size}, epsilon={args.epsilon})")
    for name, pretrained in (("random-init", False), ("ImageNet", True)):
        out = work / f"1-clusters-{name}"
        result = run_stage1(work / "demo" / "specimens", out, pretrained, args)
        if isinstance(result, str):
            print(f"{name:12s} {result}")
            continue
        print(f"{name:12s} ARI all images {result['ari_all']:.3f}, clustered only "
              f"{result['ari_clustered']:.3f} ({result['clusters']} clusters, {result['outliers']} "
              f"outliers of {result['images']}; {result['seconds']:.0f} s)")
        table = sweep_ari(out, work / "demo" / "labels.csv", args.min_cluster_size, args.seed)
        print(table.to_string(index=False, na_rep="undefined"))
        best = table.loc[table.silhouette.fillna(-2).idxmax()]
        print(f"{name:12s} ARI at the best-silhouette sweep row: {best.ari_all:.3f}; best ARI in the "
              f"sweep: {table.ari_all.max():.3f}")


if __name__ == "__main__":
    main()
