"""Stage 0 quality: mean IoU of each segmentation method against ground truth (printed, not asserted).

(a) Generated specimens (wingclr.demo, label masks per wing): --method threshold, and a Mask R-CNN
    trained briefly here on other generated specimens (--pretrained coco when
    weights/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth is present, else random init), then
    --method maskrcnn (and maskrcnn+rembg when weights/<rembg model>.onnx is present).
    threshold keeps the whole specimen, so its wing-union IoU is capped by the body; its IoU
    against the specimen foreground (wings + body) is printed too.
(b) Real photos in ../shared/data/butterflies/leeds (live butterflies in natural scenes, binary
    masks): threshold, rembg when its model file is in weights/, and the Mask R-CNN of (a).
    Skipped when the folder is absent.

    python benchmarks/segmentation.py                              # ~10 min on an idle 2-core CPU
    python benchmarks/segmentation.py --train-n 200 --steps 1500 --device cuda
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LEEDS = REPO.parent / "shared" / "data" / "butterflies" / "leeds"


def stage(relpath: str):
    spec = importlib.util.spec_from_file_location(Path(relpath).stem, REPO / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(relpath: str, *argv) -> object:
    module = stage(relpath)
    return module.main(module.get_args_parser().parse_args([str(a) for a in argv]))


def evaluate(pred: Path, gt: Path, suffix: str = "", name: str = "evaluation.csv") -> pd.Series:
    table = run("0-segmentation/evaluate_segmentation.py", "--pred", pred, "--gt", gt,
                "--gt-suffix", suffix, "--output", pred / name)
    from wingclr.segment.metrics import summarise

    return summarise(table)


def segment(photos: Path, out: Path, method: str, extra=()) -> float:
    start = time.perf_counter()
    run("0-segmentation/segment.py", "--input", photos, "--output", out, "--method", method,
        "--no-progress", *extra)
    return time.perf_counter() - start


def available(file: str) -> bool:
    from wingclr.weights import weights_dir

    return (weights_dir() / file).is_file()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=REPO / "work" / "bench-segmentation")
    p.add_argument("--train-n", type=int, default=64, help="generated training specimens")
    p.add_argument("--test-n", type=int, default=30, help="generated test specimens")
    p.add_argument("--size", type=int, default=128, help="specimen image side (px)")
    p.add_argument("--steps", type=int, default=200, help="Mask R-CNN training steps")
    p.add_argument("--model-size", type=int, default=160, help="Mask R-CNN --min-size/--max-size")
    p.add_argument("--rembg-model", default="u2net")
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    from wingclr.demo import generate

    work = a.work
    generate(work / "train", n=a.train_n, size=a.size, seed=1)
    generate(work / "test", n=a.test_n, size=a.size, seed=2)
    results = []

    t = segment(work / "test" / "specimens", work / "test-threshold", "threshold", ["--overwrite"])
    wings = evaluate(work / "test-threshold", work / "test" / "masks")
    body = evaluate(work / "test-threshold", work / "test" / "foreground", name="vs_foreground.csv")
    results.append(("generated", "threshold", wings["union_iou"], np.nan, t))
    print(f"threshold vs specimen foreground (wings + body): IoU {body['union_iou']:.3f}")

    coco = available("maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")
    ckpt = work / "maskrcnn_bench.pth"
    start = time.perf_counter()
    run("0-segmentation/train_maskrcnn.py", "--images", work / "train" / "specimens", "--masks",
        work / "train" / "masks", "--output", ckpt, "--work-dir", work / "train-run",
        "--pretrained", "coco" if coco else "none", "--min-size", a.model_size, "--max-size",
        a.model_size, "--epochs", 10_000, "--max-steps", a.steps, "--batch-size", 2,
        "--trainable-backbone-layers", 3 if coco else 5, "--device", a.device,
        "--num-workers", 2, "--val-fraction", 0.1, "--overwrite")
    train_s = time.perf_counter() - start
    print(f"Mask R-CNN: {a.steps} steps from {'COCO' if coco else 'random init'} in {train_s:.0f} s")
    rembg_ok = available(f"{a.rembg_model}.onnx")
    methods = ["maskrcnn"] + (["maskrcnn+rembg"] if rembg_ok else [])
    for method in methods:
        out = work / f"test-{method.replace('+', '_')}"
        t = segment(work / "test" / "specimens", out, method,
                    ["--checkpoint", ckpt, "--rembg-model", a.rembg_model, "--device", a.device,
                     "--overwrite"])
        row = evaluate(out, work / "test" / "masks")
        per_class = np.nanmean([row[c] for c in row.index if c.endswith("_iou") and c != "union_iou"])
        results.append(("generated", method, row["union_iou"], per_class, t))

    if LEEDS.is_dir():
        leeds = [("threshold", [])]
        leeds += [("rembg", ["--rembg-model", a.rembg_model])] if rembg_ok else []
        leeds += [("maskrcnn", ["--checkpoint", ckpt, "--device", a.device])]
        for method, extra in leeds:
            out = work / f"leeds-{method}"
            t = segment(LEEDS / "images", out, method, [*extra, "--overwrite"])
            results.append(("leeds", method, evaluate(out, LEEDS / "masks", "_mask")["union_iou"],
                            np.nan, t))
    else:
        print(f"{LEEDS} not found: real-photo benchmark skipped")
    if not rembg_ok:
        print(f"rembg: weights/{a.rembg_model}.onnx not present, rembg methods not run")

    table = pd.DataFrame(results, columns=["data", "method", "union_iou", "mean_class_iou", "seconds"])
    print("\nmean IoU against ground truth (union = all wings; class = mean over the 4 wing classes)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
