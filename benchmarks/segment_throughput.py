"""Stage 0 throughput: photos/s of one process against N processes (``--shard K/N``) on this
machine's CPUs, with ``--method threshold`` (no weights) and, when its file is in weights/, rembg.

    python benchmarks/segment_throughput.py                      # 40 photos of 512 px, 1 vs 2
    python benchmarks/segment_throughput.py --photos 200 --processes 4 --rembg-model isnet-general-use

Prints photos/s per configuration and the ratio N processes / 1 process (wall time from the
start of the first process to the merge, process start-up included: what a user waits for).
Photos are generated (dark ellipses on a light, slightly graded background).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_photos(folder: Path, n: int, size: int, seed: int = 0) -> None:
    import cv2

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    h, w = size * 3 // 4, size
    for i in range(n):
        img = np.full((h, w, 3), 225, np.uint8) + np.linspace(0, 20, w, dtype=np.uint8)[None, :, None]
        axes = (int(rng.integers(w // 6, w // 3)), int(rng.integers(h // 8, h // 4)))
        cv2.ellipse(img, (w // 2, h // 2), axes, float(rng.integers(0, 180)), 0, 360,
                    tuple(int(c) for c in rng.integers(0, 90, 3)), -1)
        cv2.imwrite(str(folder / f"photo_{i:04d}.jpg"), img)


def run(photos: Path, out: Path, processes: int, method: list[str]) -> float:
    """Wall seconds for ``processes`` shards started together (1: no --shard)."""
    shutil.rmtree(out, ignore_errors=True)

    def command(shard: str) -> list[str]:
        return [sys.executable, str(REPO / "0-segmentation" / "segment.py"), "--input", str(photos),
                "--output", str(out), "--quiet", "--shard", shard, *method]

    start = time.perf_counter()
    procs = [subprocess.Popen(command(f"{k}/{processes}" if processes > 1 else "none"),
                              stdout=subprocess.DEVNULL) for k in range(1, processes + 1)]
    if any(p.wait() for p in procs):
        raise SystemExit("a segment.py process failed")
    seconds = time.perf_counter() - start
    assert (out / "manifest.json").is_file(), "no merged output"
    return seconds


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=40, help="generated photos")
    p.add_argument("--size", type=int, default=512, help="photo width (px)")
    p.add_argument("--processes", type=int, default=2, help="shards run at once against one process")
    p.add_argument("--rembg-model", default="isnet-general-use",
                   help="rembg model also measured when weights/<name>.onnx is present")
    a = p.parse_args(argv)
    from wingclr.weights import weights_dir

    methods = [["--method", "threshold"]]
    if (weights_dir() / f"{a.rembg_model}.onnx").is_file():
        methods.append(["--method", "rembg", "--rembg-model", a.rembg_model])
    else:
        print(f"rembg: {weights_dir() / (a.rembg_model + '.onnx')} not present, not measured")
    with tempfile.TemporaryDirectory(prefix="wingclr-seg-bench-") as tmp:
        photos = Path(tmp) / "photos"
        make_photos(photos, a.photos, a.size)
        print(f"{a.photos} photos of {a.size} px; wall time includes process start-up and the merge")
        for method in methods:
            rates = {}
            for n in (1, a.processes):
                seconds = run(photos, Path(tmp) / f"out_{n}", n, method)
                rates[n] = a.photos / seconds
                print(f"{' '.join(method[1::2]):28} {n} process{'es' * (n > 1):2}  {seconds:6.1f} s  "
                      f"{rates[n]:6.2f} photos/s")
            print(f"{' '.join(method[1::2]):28} ratio {a.processes} / 1 processes: "
                  f"{rates[a.processes] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
