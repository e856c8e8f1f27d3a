"""Stage 1 at scale: seconds for UMAP (3-D) + HDBSCAN + silhouette on 20 000 x 4096 float32 features.

Synthetic VGG16-like features (non-negative, 4096-d) drawn around ``--clusters`` centres, made in
float32 chunks. Prints the seconds of each step, peak resident memory, and the adjusted Rand index
vs. the true groups (a sanity check). A tiny UMAP fit runs first so numba's one-off compilation
(~14 s per process) is reported apart from the fit itself.

    python benchmarks/clustering_scale.py                      # 20 000 x 4096, seeded UMAP
    python benchmarks/clustering_scale.py --pca-dims 50        # PCA to 50 axes before UMAP
    python benchmarks/clustering_scale.py --n 2000             # quick look
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_features(n: int, dim: int, clusters: int, seed: int = 0,
                       chunk: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """``(n, dim)`` float32 ReLU features and the true group per row (-1: stray images).

    Groups have unequal sizes; 5 % of the rows are strays, each around its own random centre.
    """
    rng = np.random.default_rng(seed)
    strays = n // 20
    centres = np.maximum(rng.normal(0, 1, (clusters + strays, dim)), 0).astype(np.float32)
    labels = rng.choice(clusters, n - strays, p=rng.dirichlet(np.full(clusters, 2.0)))
    labels = rng.permutation(np.r_[labels, clusters + np.arange(strays)])
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        part = labels[start:start + chunk]
        noise = rng.standard_normal((len(part), dim), dtype=np.float32) * 0.6
        x[start:start + chunk] = np.maximum(centres[part] + noise, 0)
    return x, np.where(labels < clusters, labels, -1)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--clusters", type=int, default=12)
    p.add_argument("--min-cluster-size", type=int, default=50)
    p.add_argument("--epsilon", type=float, default=0.0)
    p.add_argument("--pca-dims", type=int, default=0, help="PCA before UMAP (0: off, as stage 1's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from sklearn.metrics import adjusted_rand_score

    from wingclr.cluster.clustering import cluster, project_umap

    t = time.perf_counter()
    x, truth = synthetic_features(args.n, args.dim, args.clusters, args.seed)
    print(f"features: {x.shape[0]} x {x.shape[1]} {x.dtype} ({x.nbytes / 1e9:.2f} GB) made in "
          f"{time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    project_umap(x[:300], seed=args.seed, pca_dims=args.pca_dims)
    print(f"numba compile + tiny UMAP warm-up: {time.perf_counter() - t:.1f} s (once per process)")
    t = time.perf_counter()
    emb = project_umap(x, seed=args.seed, pca_dims=args.pca_dims)
    t_umap = time.perf_counter() - t
    t = time.perf_counter()
    result = cluster(emb, args.min_cluster_size, args.epsilon, seed=args.seed)
    t_cluster = time.perf_counter() - t
    print(f"UMAP 3-D{f' (PCA {args.pca_dims})' if args.pca_dims else ''}: {t_umap:.1f} s; "
          f"HDBSCAN + silhouette: {t_cluster:.1f} s; total {t_umap + t_cluster:.1f} s")
    print(f"{result.summary()}")
    print(f"ARI vs. the {args.clusters} true groups: {adjusted_rand_score(truth, result.labels):.3f}; "
          f"peak RSS {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
