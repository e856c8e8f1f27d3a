"""The GPU path's first-day check: one command, under 8 minutes on one H100 (issue 25).

    python benchmarks/gpu_check.py            # one GPU: ResNet-50, 224 px, batch 256, bf16
    python benchmarks/gpu_check.py --tiny     # the same checks on the CPU with tiny sizes (tests)

Prints, then ``PASS`` or ``FAIL`` per check (exit 1 when one fails):

1. throughput: (a) / (b) / (c) of ``benchmarks/train_throughput.py`` and their ratios b/a, b/c;
2. memory: the peak GPU memory of one stage 3 training step beside the estimate of
   ``wingclr.train.memory`` (the check before training), and their ratio;
3. syncs: host-device sync ops per training step (augmentation alone must have 0);
4. resume: a short real ``3-training/train.py`` run on generated images, stopped with SIGUSR1
   during epoch 2 and re-run, against the same run uninterrupted: the same steps and epochs, the
   losses within 5 % (the largest difference is printed: a resumed device-path run is not yet
   bit-exact after the stop, on the CPU either; the epochs before it are);
5. stage 4 (``4-embed/embed.py``) on the resumed run: embeddings of every image, all finite.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {  # --tiny: seconds on a CPU; default: one GPU
    "gpu": {"device": "cuda", "backbone": "resnet50", "input_size": 224, "batch": 256,
            "precision": "bf16-mixed", "bench": ["--workers", "8", "--images", "1024", "--steps", "8",
                                                  "--rounds", "2", "--warmup", "3"],
            "specimens": 240, "specimen_px": 256, "run": ["--batch-size", "64", "--epochs", "3"]},
    "tiny": {"device": "cpu", "backbone": "resnet18", "input_size": 32, "batch": 8,
             "precision": "32-true", "bench": ["--workers", "0", "--images", "16", "--jpeg-size", "48",
                                                "--steps", "1", "--rounds", "1", "--warmup", "1"],
             "specimens": 30, "specimen_px": 48, "run": ["--batch-size", "8", "--epochs", "3"]},
}


def stage(script: str, *args, **popen) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}  # stops exit, no requeue
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, **popen)


def throughput(cfg: dict, work: Path) -> dict:
    """(a), (b), (c) and the ratios from train_throughput.py (half the batch if (a) runs out of memory)."""
    batch = cfg["batch"]
    while True:
        proc = stage("benchmarks/train_throughput.py", "--device", cfg["device"], "--backbone", cfg["backbone"],
                     "--input-size", cfg["input_size"], "--batch-size", batch, "--work", work, *cfg["bench"])
        if proc.returncode == 0 or "out of memory" not in proc.stderr or batch <= 8:
            break
        print(f"  train_throughput.py ran out of GPU memory at batch {batch}; again at {batch // 2}")
        batch //= 2
    if proc.returncode:
        raise RuntimeError(f"train_throughput.py failed: {proc.stderr[-2000:]}")
    print("  " + proc.stdout.strip().replace("\n", "\n  "))
    rates = {k: float(v) for k, v in re.findall(r"\((a|b|c)\)[^:]*:\s*([\d.]+) img/s", proc.stdout)}
    ratios = {k: float(v) for k, v in re.findall(r"(b/a|b/c) = ([\d.]+)", proc.stdout)}
    return {**rates, **ratios, "batch": batch}


def step_memory_and_syncs(cfg: dict) -> dict:
    """One stage 3 step on ``cfg``'s batch: sync ops (augmentation alone and the whole step) and
    the peak GPU memory beside the estimate."""
    import torch

    from wingclr.train.augment import AugmentConfig
    from wingclr.train.memory import activation_gib
    from wingclr.train.simclr import SimCLR
    from wingclr.train.syncs import SyncCounter

    device, size, batch = torch.device(cfg["device"]), cfg["input_size"], cfg["batch"]
    aug = AugmentConfig(input_size=size).to_dict()  # lightly's recipe: every op on
    model = SimCLR(backbone=cfg["backbone"], input_size=size, augment=[aug, aug],
                   channels_last=True).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    bf16 = cfg["precision"] == "bf16-mixed"

    def step():
        views = model.views((images, None))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model.criterion(*model.projections(*views))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: kernels chosen, optimiser state made
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with SyncCounter() as augmentation:
        model.views((images, None))
    with SyncCounter() as whole:
        step()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    estimate = activation_gib(backbone=cfg["backbone"], input_size=size, batch_per_gpu=batch,
                              precision=cfg["precision"])
    return {"augmentation": dict(augmentation.counts), "step": dict(whole.counts), "peak": peak,
            "estimate": estimate}


def stopped_and_resumed(cfg: dict, work: Path) -> dict:
    """Train the same short run twice, the second stopped by SIGUSR1 in epoch 2 and re-run."""
    import pandas as pd
    import torch

    from wingclr.demo import generate

    generate(work / "demo", n=cfg["specimens"], size=cfg["specimen_px"], seed=0)
    data = work / "2-dataset"
    proc = stage("2-create_dataset/create_dataset.py", "--input", work / "demo" / "clusters", "--output", data)
    if proc.returncode:
        raise RuntimeError(f"stage 2 failed: {proc.stderr[-2000:]}")
    common = ["--data", data, "--output", work / "runs", "--backbone", cfg["backbone"], "--pretrained",
              "none", "--input-size", cfg["input_size"], "--augment-on", "device", "--cache-dir",
              work / "cache", "--warmup-epochs", "0", "--save-every-min", "10", *cfg["run"]]
    cache = stage("3-training/train.py", *common, "--cache-only")  # its DataLoader draws random seeds
    if cache.returncode:
        raise RuntimeError(f"train.py --cache-only failed: {cache.stderr[-2000:]}")
    whole = stage("3-training/train.py", *common, "--run-name", "whole")
    if whole.returncode:
        raise RuntimeError(f"train.py failed: {whole.stderr[-2000:]}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    args = [sys.executable, str(REPO / "3-training/train.py"), *map(str, common), "--run-name", "stopped"]
    run = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, text=True)
    lines = []
    for line in run.stdout:  # one line per epoch (stdout is a pipe): stop during epoch 2
        lines.append(line)
        if line.startswith("epoch 1/"):
            run.send_signal(signal.SIGUSR1)
    stopped = run.wait()
    saved = next((line.strip() for line in lines if line.startswith("SIGUSR1: saved")), None)
    again = stage("3-training/train.py", *common, "--run-name", "stopped")
    if again.returncode:
        raise RuntimeError(f"the resumed train.py failed: {again.stderr[-2000:]}")
    out = {"stop_exit": stopped, "saved": saved}
    for name in ("whole", "stopped"):
        ckpt = torch.load(work / "runs" / name / f"{name}.ckpt", map_location="cpu", weights_only=False)
        metrics = pd.read_csv(work / "runs" / name / "metrics.csv")
        out[name] = {"steps": ckpt["global_step"], "epochs": metrics.epoch.tolist(),
                     "losses": metrics.train_loss.dropna().tolist()}  # epoch 0: the monitor, no loss
    return out


def embed(work: Path) -> dict:
    import numpy as np

    proc = stage("4-embed/embed.py", "--checkpoints", work / "runs" / "stopped", "--data",
                 work / "2-dataset", "--output", work / "4-embeddings", "--num-workers", "0",
                 "--cache-dir", work / "cache")
    if proc.returncode:
        raise RuntimeError(f"embed.py failed: {proc.stderr[-2000:]}")
    vectors = np.load(work / "4-embeddings" / "stopped" / "embeddings.npy")
    return {"shape": vectors.shape, "finite": bool(np.isfinite(vectors).all())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (seconds; the test suite)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)
    cfg = SIZES["tiny" if args.tiny else "gpu"]
    import torch

    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        print("error: no GPU visible; run with --tiny for the CPU version", file=sys.stderr)
        return 2
    results, start = [], time.perf_counter()

    def check(name: str, ok: bool, detail: str) -> None:
        results.append(ok)
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}  [{time.perf_counter() - start:.0f} s]", flush=True)

    device = torch.cuda.get_device_name() if cfg["device"] == "cuda" else "CPU"
    print(f"gpu_check on {device}: {cfg['backbone']}, {cfg['input_size']} px, batch {cfg['batch']}, "
          f"{cfg['precision']}")
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        t = throughput(cfg, work / "throughput")
        check("throughput", t["b/a"] > 0 and t["b/c"] > 0,
              f"(a) {t['a']:.1f}, (b) {t['b']:.1f}, (c) {t['c']:.1f} img/s at batch {t['batch']}; "
              f"b/a = {t['b/a']:.2f}, b/c = {t['b/c']:.2f}")
        s = step_memory_and_syncs(cfg)
        peak = "no GPU" if s["peak"] is None else f"peak {s['peak']:.1f} GiB, ratio {s['peak'] / s['estimate']:.2f}"
        check("memory", s["peak"] is None or s["peak"] <= s["estimate"] * 1.25,
              f"{peak}; estimate {s['estimate']:.1f} GiB (wingclr.train.memory)")
        check("syncs", not s["augmentation"],
              f"augmentation {sum(s['augmentation'].values())}, whole step {sum(s['step'].values())} "
              f"{s['step'] or ''}")
        r = stopped_and_resumed(cfg, work)
        diff = max(abs(a - b) / abs(b) for a, b in zip(r["stopped"]["losses"], r["whole"]["losses"]))
        same = diff <= 0.05
        check("resume", r["stop_exit"] == 128 + signal.SIGUSR1 and r["saved"] is not None and same
              and r["stopped"]["steps"] == r["whole"]["steps"] and r["stopped"]["epochs"] == r["whole"]["epochs"],
              f"exit {r['stop_exit']} ({r['saved']}); steps {r['stopped']['steps']} / {r['whole']['steps']}; "
              f"largest loss difference {100 * diff:.2f} %; "
              f"losses {[round(x, 4) for x in r['stopped']['losses']]} / "
              f"{[round(x, 4) for x in r['whole']['losses']]}")
        e = embed(work)
        check("stage 4", e["finite"] and e["shape"][0] == cfg["specimens"],
              f"embeddings {e['shape']}, finite {e['finite']}")
    print(f"{sum(results)}/{len(results)} checks passed in {time.perf_counter() - start:.0f} s")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
