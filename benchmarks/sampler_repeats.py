"""How often a balanced batch holds the same image twice: drawing with replacement (wingclr before
the no-repeat sampler) vs stage 3's EpochBatchSampler, on 5 062 images in 40 skewed clusters.

    python benchmarks/sampler_repeats.py

Prints, per batch size, the share of a batch's images that have a twin in the same batch, and the
share of draws that go to the largest cluster, for --balance clusters and sqrt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def skewed(n: int = 5062, k: int = 40) -> list[str]:
    """``n`` images in ``k`` clusters of very unequal size (3 to ~1 000 images); tests use it too."""
    sizes = np.round(np.geomspace(3, 600, k)).astype(int)
    sizes[-1] += n - sizes.sum()
    return [f"c{i}" for i, m in enumerate(sizes) for _ in range(m)]


def twin_share(batches) -> float:
    """Share of the images of a batch that appear more than once in it."""
    shares = []
    for b in batches:
        _, counts = np.unique(np.asarray(b), return_counts=True)
        shares.append(counts[counts > 1].sum() / len(b))
    return float(np.mean(shares))


def main() -> None:
    from wingclr.train.loaders import EpochBatchSampler, cluster_weights

    clusters = skewed()
    big = max(set(clusters), key=clusters.count)
    print(f"{len(clusters)} images, {len(set(clusters))} clusters (largest {clusters.count(big)} images, "
          f"{clusters.count(big) / len(clusters):.0%})")
    print(f"{'balance':<9} {'batch':>5}  {'twins, with replacement':>24}  {'twins, stage 3':>14}  {'largest cluster share':>21}")
    for balance in ("clusters", "sqrt"):
        w = cluster_weights(clusters, balance)
        for batch in (64, 256, 1024):
            g = torch.Generator().manual_seed(0)
            old = torch.multinomial(w, len(clusters) // batch * batch, replacement=True, generator=g)
            new = list(EpochBatchSampler(range(len(clusters)), batch, seed=0, weights=w))
            share = np.mean([clusters[i] == big for b in new for i in b])
            print(f"{balance:<9} {batch:>5}  {twin_share(old.view(-1, batch).tolist()):>24.1%}  "
                  f"{twin_share(new):>14.1%}  {share:>21.1%}")


if __name__ == "__main__":
    main()
