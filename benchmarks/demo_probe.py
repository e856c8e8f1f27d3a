"""Does SimCLR training help on the demo set? Linear probe and kNN vs random init and pixel PCA.

Generates the demo set as ``make demo`` does (600 specimens, 96 px, 5 wing-pattern phenotypes as
clusters), trains SimCLR with make demo's settings (ResNet-18 from random init, 64 px, batch 64,
45 epochs, probe_common.CPU_RECIPE), then scores on the same validation splits (averaged over --splits stage 2 seeds):
(a) the trained backbone, (b) the same backbone at random initialisation (no training), (c) pixel
PCA, and (d) ImageNet ResNet-18 when weights/resnet18-f37072fd.pth is present. Prints accuracy,
kNN accuracy and silhouette per method and SimCLR's ratios to the baselines. Nothing is asserted.

    python benchmarks/demo_probe.py                         # make bench; ~10 min on 2 CPU cores
    python benchmarks/demo_probe.py --epochs 100 --work work/bench/demo-100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe_common import add_budget_args, report, run_benchmark  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("work/bench/demo"), help="working folder")
    p.add_argument("--n", type=int, default=600, help="specimens")
    p.add_argument("--size", type=int, default=96, help="specimen image side (px)")
    add_budget_args(p, epochs=45, input_size=64, batch_size=64, splits=5)
    args = p.parse_args(argv)

    from wingclr.demo import PHENOTYPES, generate

    specimens = args.work / "specimens-set"
    if not (specimens / "manifest.json").exists():
        generate(specimens, n=args.n, size=args.size)
    results = run_benchmark(specimens / "clusters", args.work, args)
    results.to_csv(args.work / "results.csv", index=False)
    print(f"\ndemo set: {args.n} specimens at {args.size} px, ResNet-18 {args.input_size} px, "
          f"batch {args.batch_size}, {args.epochs} epochs, T={args.temperature}")
    print(report(results, chance=1 / len(PHENOTYPES)))


if __name__ == "__main__":
    main()
