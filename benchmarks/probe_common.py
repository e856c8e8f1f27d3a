"""Shared by demo_probe.py and real_data.py: run stages 2-5 as a user would and compare methods.

SimCLR trains on ``unlabeled/`` (every image, whatever the split), so one training run serves
several train/validation splits: stage 2 is run with ``--seed 0..S-1``, stage 3 once, stages 4-5
once per split. Every method (SimCLR, random init, pixel PCA, ImageNet) is scored by stage 5 on the
same splits; the mean and standard deviation over the splits are printed. Stage scripts skip
finished work, so re-running a benchmark with the same --work folder only redoes what is missing.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
METHODS = {"simclr": "SimCLR (trained)", "random_init": "random init (no training)",
           "pixel_pca": "pixel PCA", "imagenet": "ImageNet (no SimCLR)"}


def stage(script: str, *argv) -> None:
    """Run a stage script in a subprocess; stop the benchmark with its error if it fails."""
    cmd = [sys.executable, str(REPO / script), *map(str, argv)]
    print("$", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{script} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    for line in proc.stdout.splitlines():
        if line.startswith(("note:", "skip:", "error:")):
            print("  " + line)


# The short-CPU-run recipe (same as `make demo`): a few hundred steps from random initialisation
# learn little with the ImageNet-style defaults (SGD, T=0.5, crops down to 8 % of a 64 px image,
# blur); Adam, T=0.2 and crops of >= 30 % without blur learn wing patterns within that budget.
# The recipe's values live in wingclr/train/settings.py (RECIPES["cpu"]); only the temperature is a grid value.
CPU_RECIPE = {"temperature": 0.2, "train": "--recipe cpu"}


def add_budget_args(p, epochs: int, input_size: int, batch_size: int, splits: int) -> None:
    p.add_argument("--epochs", type=int, default=epochs, help="SimCLR epochs")
    p.add_argument("--input-size", type=int, default=input_size, help="training/embedding size (px)")
    p.add_argument("--batch-size", type=int, default=batch_size, help="SimCLR batch size")
    p.add_argument("--temperature", type=float, default=CPU_RECIPE["temperature"], help="NT-Xent temperature")
    p.add_argument("--lr", type=float, default=None,
                   help="base learning rate at batch 256 (default: the recipe's; stage 3 scales it "
                        "by sqrt(batch / 256))")
    p.add_argument("--splits", type=int, default=splits,
                   help="train/validation splits (stage 2 seeds) the probes are averaged over")
    p.add_argument("--pixel-size", type=int, default=32, help="pixel-PCA baseline size (px)")
    p.add_argument("--extra-train-args", default=CPU_RECIPE["train"], help="more 3-training/train.py flags")


def run_benchmark(clusters: Path, work: Path, args) -> pd.DataFrame:
    """Stages 2-5 on a folder of class folders.

    Returns:
        One row per (split, method): split, method, accuracy, knn_accuracy, silhouette.
    """
    t0 = time.perf_counter()
    train_args = ["--backbone", "resnet18", "--pretrained", "none", "--input-size", args.input_size,
                  "--batch-size", args.batch_size, "--epochs", args.epochs,
                  "--temperature", args.temperature, *(["--lr", args.lr] if args.lr is not None else []),
                  *args.extra_train_args.split()]
    datasets = [work / f"2-dataset-split{s}" for s in range(args.splits)]
    for s, d in enumerate(datasets):
        stage("2-create_dataset/create_dataset.py", "--input", clusters, "--output", d,
              "--seed", s, "--link", "symlink")
    t_train = time.perf_counter()
    stage("3-training/train.py", "--data", datasets[0], "--output", work / "3-training", *train_args)
    t_train = time.perf_counter() - t_train
    rows = []
    for s, d in enumerate(datasets):
        emb, ev = work / f"4-embeddings-split{s}", work / f"5-evaluation-split{s}"
        stage("4-embed/embed.py", "--training-dir", work / "3-training", "--data", d,
              "--output", emb, "--quiet")
        stage("5-evaluation/evaluate.py", "--embeddings", emb, "--output", ev, "--no-umap",
              "--baselines", "pixel,imagenet,random", "--pixel-size", args.pixel_size)
        table = pd.read_csv(ev / "evaluation.csv").iloc[0]
        base = pd.read_csv(ev / "baselines.csv").set_index("name")
        rows.append({"split": s, "method": "simclr", "accuracy": table["accuracy"],
                     "knn_accuracy": table["knn_accuracy"], "silhouette": table["silhouette"],
                     "n_val": table["n_val"]})
        for name in ("random_init", "pixel_pca", "imagenet"):
            if name in base.index:
                b = base.loc[name]
                rows.append({"split": s, "method": name, "accuracy": b["accuracy"],
                             "knn_accuracy": b["knn_accuracy"], "silhouette": b["silhouette"],
                             "n_val": b["n_val"]})
    print(f"stages 2-5: {time.perf_counter() - t0:.0f} s (training {t_train:.0f} s)")
    return pd.DataFrame(rows)


def report(results: pd.DataFrame, chance: float) -> str:
    """Mean +- sd over splits per method, and SimCLR's ratios to the baselines."""
    summary = results.groupby("method")[["accuracy", "knn_accuracy", "silhouette"]].agg(["mean", "std"])
    lines = [f"{'method':<28}{'linear':>16}{'kNN (k=20)':>16}{'silhouette':>16}"]
    for m, label in METHODS.items():
        if m not in summary.index:
            lines.append(f"{label:<28}{'n/a (no weights)':>16}")
            continue
        r = summary.loc[m]
        lines.append(f"{label:<28}" + "".join(f"{r[(c, 'mean')]:>9.3f} ± {r[(c, 'std')]:.3f}"
                                               for c in ("accuracy", "knn_accuracy", "silhouette")))
    n_val = results.groupby("split")["n_val"].first()
    lines.append(f"chance {chance:.3f}; {len(n_val)} splits x {int(n_val.mean())} validation "
                 "images; ± = sd over splits")
    means = results.groupby("method")[["accuracy", "knn_accuracy"]].mean()
    for ref in ("random_init", "pixel_pca", "imagenet"):
        if ref in means.index and "simclr" in means.index:
            lin = means.loc["simclr", "accuracy"] / means.loc[ref, "accuracy"]
            knn = means.loc["simclr", "knn_accuracy"] / means.loc[ref, "knn_accuracy"]
            lines.append(f"SimCLR / {METHODS[ref]}: linear x{lin:.2f}, kNN x{knn:.2f}")
    return "\n".join(lines)
