"""Fine-tune Mask R-CNN on wing annotations (``0-segmentation/train_maskrcnn.py``).

The run lives in ``--work-dir``: ``last.pth`` (model, optimiser, schedule, history; rewritten
atomically after every epoch, so re-running the same command resumes), ``metrics.csv`` (losses and
validation mask IoU per class, per epoch) and ``manifest.json`` (written last). The checkpoint with
the best mean validation IoU goes to ``--output`` (default ``weights/maskrcnn_wings.pth``) with its
class names, ready for ``segment.py``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..cli import UserError, require_output_folder
from ..outputs import (MANIFEST, atomic_path, changed_keys, check_finished, recorded_settings, write_csv,
                       write_manifest)
from ..untrusted import load_torch
from .annotations import check_classes, load_coco, load_mask_folder
from .dataset import WingDataset, check_items, collate, split_items
from .labelme import load_labelme
from .maskrcnn import (ModelSpec, best_per_class, build_model, default_checkpoint,
                       keep_best_per_class, read_checkpoint, save_checkpoint,
                       spec_of)
from .methods import pick_device
from .metrics import iou_dice
from .settings import MaskRCNNSettings

LAST = "last.pth"
STAGE = "0-train-maskrcnn"  # the manifest's stage name (outputs.RUN_ONLY)


def load_annotations(s: MaskRCNNSettings, expected: list[str] | None):
    """``(classes, items, skipped)`` from ``--annotations`` (a COCO file or a folder of labelme
    files) or ``--masks`` (label PNGs); ``expected``: the ``--init`` checkpoint's classes."""
    if s.annotations and Path(s.annotations).is_dir():

        return load_labelme(s.annotations, s.images, expected or s.classes)
    if s.annotations:
        return load_coco(s.annotations, s.images, expected or s.classes)
    classes = check_classes(s.classes, expected, f"--classes of {s.masks}")
    items, skipped = load_mask_folder(s.images, s.masks, classes, s.mask_suffix)
    return classes, items, skipped


def set_sizes(model, spec: ModelSpec, jitter: float) -> None:
    """Training resizes to a random one of 5 sizes within ``1 +- jitter``; evaluation to one."""
    t = model.transform
    if jitter > 0:
        t.min_size = tuple(sorted({round(spec.min_size * f)
                                   for f in np.linspace(1 - jitter, 1 + jitter, 5)}))
        t.max_size = round(spec.max_size * (1 + jitter))
    else:
        t.min_size, t.max_size = (spec.min_size,), spec.max_size


@torch.inference_mode()
def validate(model, dataset: WingDataset, device, score_threshold: float) -> dict:
    """Mean mask IoU per class of the best detection per class, over ``dataset``.

    Returns:
        ``{"val_<class>_iou": ..., "val_mean_iou": ...}``; a class absent from an image's ground
        truth and prediction is not counted for that image. Empty dict without validation images.
    """
    if not len(dataset):
        return {}
    model.eval()
    per_class: dict[str, list[float]] = {c: [] for c in dataset.classes}
    for i in range(len(dataset)):
        image, target = dataset[i]
        found = {inst.label: inst.prob >= 128
                 for inst in best_per_class(model([image.to(device)])[0], score_threshold)}
        gt = dict(zip(target["labels"].tolist(), target["masks"].numpy().astype(bool)))
        empty = np.zeros(image.shape[1:], bool)
        for k, name in enumerate(dataset.classes, start=1):
            iou, _ = iou_dice(found.get(k, empty), gt.get(k, empty))
            if not math.isnan(iou):
                per_class[name].append(iou)
    row = {f"val_{c}_iou": float(np.mean(v)) if v else math.nan for c, v in per_class.items()}
    scored = [v for v in row.values() if not math.isnan(v)]
    row["val_mean_iou"] = float(np.mean(scored)) if scored else 0.0
    return row


def _schedule(optimizer, total: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return 0.001 + 0.999 * step / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _start_model(s: MaskRCNNSettings, classes: list[str]):
    """Build the model: from ``--init`` (classes must match), COCO weights or random."""
    if s.init:
        ckpt = read_checkpoint(s.init)
        check_classes(classes, ckpt["classes"], f"the annotations (checkpoint {s.init})")
        base = spec_of(ckpt)
        spec = ModelSpec(tuple(ckpt["classes"]), base.arch, s.min_size, s.max_size,
                         base.frozen_bn)
        model = build_model(spec, "none", s.trainable_backbone_layers)
        model.load_state_dict(ckpt["model"])
        return model, spec
    spec = ModelSpec(tuple(classes), s.arch, s.min_size, s.max_size,
                     frozen_bn=s.pretrained == "coco")
    return build_model(spec, s.pretrained, s.trainable_backbone_layers), spec


def train_maskrcnn(s: MaskRCNNSettings) -> dict | None:
    """Run the training (settings: see ``0-segmentation/train_maskrcnn.py``)."""
    work = Path(s.work_dir)
    output = Path(s.output) if s.output else default_checkpoint()
    require_output_folder(work, "--work-dir")
    if check_finished(work, s, s.overwrite, "Mask R-CNN training"):
        print(f"skip: {work} holds this finished training (manifest.json); the checkpoint is "
              f"{output}; pass --overwrite to train again")
        return None
    if s.overwrite:
        for name in (LAST, "metrics.csv", MANIFEST):
            (work / name).unlink(missing_ok=True)
    resume = _read_last(work, s)
    if resume is None and output.exists() and not s.overwrite:
        raise UserError(f"{output} already exists; pass --overwrite to replace it or choose "
                        "another --output")
    expected = list(read_checkpoint(s.init)["classes"]) if s.init else None
    classes, items, skipped = load_annotations(s, expected)
    items, bad = check_items(items, len(classes), s.max_side, s.num_workers)
    skipped += bad
    for file, reason in skipped:
        print(f"skipped: {file}: {reason}")
    train_items, val_items = split_items(items, s.val_fraction, s.seed)
    torch.manual_seed(s.seed)
    model, spec = _start_model(s, classes)
    keep_best_per_class(model)  # validation speed; training is unaffected
    # a photo holds a few wings: fewer sampled RoIs (torchvision: 512) cut the mask head's cost
    model.roi_heads.fg_bg_sampler.batch_size_per_image = s.rois_per_image
    device = pick_device(s.device)
    model.to(device)
    train_set = WingDataset(train_items, spec.classes, True, s.hflip, s.vflip, s.max_side)
    val_set = WingDataset(val_items, spec.classes, False, max_side=s.max_side)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=s.batch_size, shuffle=True, collate_fn=collate,
        num_workers=s.num_workers, drop_last=len(train_set) > s.batch_size,
        generator=torch.Generator().manual_seed(s.seed), persistent_workers=False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=s.lr, momentum=0.9, weight_decay=s.weight_decay)
    total = s.epochs * len(loader)
    total = min(total, s.max_steps) if s.max_steps else total
    scheduler = _schedule(optimizer, total, min(s.warmup_steps, max(1, total // 5)))
    state = {"epoch": 0, "step": 0, "best": -1.0, "history": []}
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        state = {k: resume[k] for k in state}
        print(f"resuming {work} after epoch {state['epoch']}")
    print(f"training Mask R-CNN ({spec.arch}, {len(spec.classes)} classes: "
          f"{', '.join(spec.classes)}) on {len(train_items)} photos, validating on "
          f"{len(val_items)}, {device}")
    for epoch in range(state["epoch"] + 1, s.epochs + 1):
        if s.max_steps and state["step"] >= s.max_steps:
            break
        row = _train_epoch(model, loader, optimizer, scheduler, spec, s, state, device)
        row.update(validate(model, val_set, device, s.score_threshold))
        row = {"epoch": epoch, **row}
        state["history"].append(row)
        state["epoch"] = epoch
        write_csv(work / "metrics.csv", pd.DataFrame(state["history"]))
        score = row.get("val_mean_iou", epoch)  # without validation the latest epoch is best
        saved = score > state["best"]
        if saved:
            state["best"] = score
            save_checkpoint(output, model, spec, epoch=epoch,
                            metrics={k: v for k, v in row.items() if isinstance(v, (int, float))},
                            trained_on=str(Path(s.annotations or s.masks)))
        _save_last(work, model, optimizer, scheduler, state, s)
        val = f", val mIoU {row['val_mean_iou']:.3f}" if "val_mean_iou" in row else ""
        if not s.quiet:
            print(f"epoch {epoch}/{s.epochs}: loss {row['loss']:.3f}{val}"
                  + (f" -> saved {output}" if saved else ""))
    return write_manifest(
        work, STAGE, s, seed=s.seed,
        counts={"train": len(train_items), "validation": len(val_items), "skipped": len(skipped),
                "epochs": state["epoch"], "steps": state["step"]},
        classes=list(spec.classes), checkpoint=str(output), best_val_mean_iou=state["best"],
        skipped_files=skipped)


def _train_epoch(model, loader, optimizer, scheduler, spec: ModelSpec, s: MaskRCNNSettings,
                 state: dict, device) -> dict:
    model.train()
    set_sizes(model, spec, s.scale_jitter)
    sums: dict[str, float] = {}
    n, start = 0, time.perf_counter()
    for images, targets in loader:
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise UserError(f"the training loss became {loss.item()} at step {state['step'] + 1}; "
                            f"lower --lr (now {s.lr}); finished epochs are kept in "
                            f"{s.work_dir}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)  # early steps can spike
        optimizer.step()
        scheduler.step()
        state["step"] += 1
        n += 1
        for k, v in {"loss": loss.detach(), **losses}.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        if s.max_steps and state["step"] >= s.max_steps:
            break
    set_sizes(model, spec, 0)
    return {"step": state["step"], "lr": optimizer.param_groups[0]["lr"],
            **{k: v / max(1, n) for k, v in sums.items()},
            "seconds": round(time.perf_counter() - start, 1)}


def _read_last(work: Path, s: MaskRCNNSettings) -> dict | None:
    path = work / LAST
    if not path.is_file():
        return None
    last = load_torch(path, what="Mask R-CNN training state",
                      fix="delete it to start the training again, or pass --overwrite")
    if not isinstance(last, dict) or not isinstance(last.get("settings", {}), dict):
        raise UserError(f"{path} is not a training state written by train_maskrcnn.py; delete it "
                        "to start the training again, or pass --overwrite")
    old, new = last.get("settings", {}), recorded_settings(s, STAGE)
    changed = changed_keys(old, new)
    if changed:
        raise UserError(f"{work} holds an unfinished training with other settings "
                        f"({', '.join(changed[:4])} differ); re-run it with the same settings to "
                        "resume, or pass --overwrite to start again")
    return last


def _save_last(work: Path, model, optimizer, scheduler, state: dict,
               s: MaskRCNNSettings) -> None:
    with atomic_path(work / LAST) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "settings": recorded_settings(s, STAGE),
                    **state}, tmp)
