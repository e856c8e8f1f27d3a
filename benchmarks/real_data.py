"""SimCLR vs baselines on the labelled real photos in ../shared/data/butterflies (CPU budget).

Classes: the 10 Leeds species (live butterflies, 10 photos each) and the 2 Heliconius species of
the museum photos (7 each), one folder per source + species, made of symlinks in --work (the data
is never copied). Runs stages 2-5 (ResNet-18 from random init; stage 2 with --splits seeds, SimCLR
trained once on all images) and prints linear-probe and kNN accuracy of SimCLR, the same backbone
at random initialisation, pixel PCA and ImageNet ResNet-18 (when weights/resnet18-f37072fd.pth
is present). Skips with a message when the data folder is absent. Nothing is asserted.

    python benchmarks/real_data.py                                # ~5 min on 2 CPU cores
    python benchmarks/real_data.py --epochs 200 --input-size 96 --work work/bench/real-96
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe_common import REPO, add_budget_args, report, run_benchmark  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "butterflies"


def class_folders(data: Path, out: Path) -> int:
    """Symlink every labelled photo into ``out/<source>_<species>/``; returns the class count."""
    import pandas as pd

    labels = pd.read_csv(data / "labels.csv", dtype=str, keep_default_na=False)
    for row in labels.itertuples():
        cls = re.sub(r"\W+", "_", f"{row.source}_{row.species}").strip("_")
        link = out / cls / Path(row.filename).name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink((data / row.filename).resolve(), link)
    return len(list(out.iterdir()))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA, help="folder with labels.csv")
    p.add_argument("--work", type=Path, default=Path("work/bench/real-data"), help="working folder")
    add_budget_args(p, epochs=100, input_size=64, batch_size=32, splits=5)
    args = p.parse_args(argv)
    if not (args.data / "labels.csv").exists():
        print(f"skipped: {args.data}/labels.csv not found (the shared sample photos are not on "
              "this machine)")
        return
    n_classes = class_folders(args.data, args.work / "classes")
    results = run_benchmark(args.work / "classes", args.work, args)
    results.to_csv(args.work / "results.csv", index=False)
    print(f"\nreal photos: {n_classes} classes (source + species), ResNet-18 from random init, "
          f"{args.input_size} px, batch {args.batch_size}, {args.epochs} epochs, T={args.temperature}")
    print(report(results, chance=1 / n_classes))


if __name__ == "__main__":
    main()
