"""Stage 0: photos -> wings alone (``images/<rel>.png`` RGBA) and label masks (``masks/<rel>.png``).

Resumable: every image's PNGs are written atomically and ``segmentation.csv`` is flushed every
``--flush-every`` images (and on interruption); a re-run skips images already listed as ``ok``
(with their PNGs present) or ``no_wings``, and processes new or failed ones. ``manifest.json`` is
written last. An output made with other settings is refused unless ``--overwrite``.

Huge photos are segmented downscaled to ``--max-side`` and the masks upscaled back (the soft
foreground linearly, the wing labels by nearest neighbour), so no full-resolution float copy is
ever made.

``coverage`` (foreground fraction of the photo) is reported per image. Cut-outs below
``--min-coverage`` (a fragment: the segmentation missed the specimen) or above ``--max-coverage``
(the background was not removed) get ``status`` ``low_coverage`` / ``high_coverage`` and are
written to ``rejected/images/`` and ``rejected/masks/`` instead of ``images/`` and ``masks/``, so
stage 1 (which reads ``images/``) never sees them; a person looks at them there and in the contact
sheet, then moves the good ones to ``images/``/``masks/`` or re-runs with other limits. Masks are
palette PNGs: the pixel values are the labels, the palette makes them visible in a viewer.
``contact_sheet.png`` shows every photo's cut-out (flagged and failed photos first, framed red;
see :mod:`wingclr.segment.sheet`).
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from ..cli import UserError, require_folder, require_output_folder, saved_so_far
from ..identity import GROUP, SOURCE, SPECIMEN, posix, without_extension
from ..imageio import ImageReadError, list_files, match_channels, read_image, write_png
from ..outputs import (MANIFEST, changed_keys, check_finished, jsonable, read_manifest, remove_stale_temps,
                       recorded_settings, write_csv, write_manifest, write_text)
from .masks import cutout, downscale, to_full_resolution, write_label_png
from .methods import Segmenter, choose_method, choose_rembg_model
from .settings import SegmentSettings
from .shards import (PARTS, TABLE, finished_shards, mark_done, merge, parse_shard,
                     part_table, previous_rows, shard_images)
from .sheet import SHEET_GLOB, write_contact_sheets

PARTIAL = ".settings.json"  # settings of an unfinished run, so a resume cannot mix settings
FLAGGED = ("low_coverage", "high_coverage")
REJECTED = "rejected"  # flagged cut-outs: rejected/images/, rejected/masks/
STATUSES = ("ok", *FLAGGED, "no_wings", "unreadable", "error")


def output_names(images: list[Path]) -> dict[Path, str]:
    """``<rel>`` with the extension replaced by ``.png``; ``<rel>.png`` where two inputs collide."""
    plain = {rel: rel.with_suffix(".png").as_posix() for rel in images}
    counts = pd.Series(list(plain.values())).value_counts()
    return {rel: (name if counts[name] == 1 else f"{rel.as_posix()}.png")
            for rel, name in plain.items()}


def run_settings(s: SegmentSettings) -> dict:
    """Settings that decide the output; those the (resolved) method does not use are blanked."""
    semantic = recorded_settings(s, "0-segmentation")
    if not s.method.startswith("maskrcnn"):
        semantic["checkpoint"] = semantic["score_threshold"] = None
    if "rembg" not in s.method:
        semantic["rembg_model"] = None
    if s.method != "maskrcnn+rembg":
        semantic["dilate"] = None
    return semantic


def _guard(out: Path, semantic: dict, overwrite: bool) -> None:
    if overwrite:
        for name in ("images", "masks", REJECTED, PARTS):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in (TABLE, MANIFEST, PARTIAL, "evaluation.csv", "evaluation_summary.csv"):
            (out / name).unlink(missing_ok=True)
        for sheet in out.glob(SHEET_GLOB):
            sheet.unlink()
        return
    check_finished(out, semantic, False, "segmentation")
    partial = out / PARTIAL
    if partial.is_file() and not (out / MANIFEST).is_file():
        try:
            old = json.loads(partial.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if not isinstance(old, dict):
            raise UserError(f"{partial} (the settings of an unfinished segmentation) is damaged, so "
                            "a resume cannot tell whether they match; pass --overwrite to start "
                            "again (finished photos are segmented again)")
        changed = changed_keys(old, semantic)
        if changed:
            raise UserError(f"{out} holds an unfinished segmentation made with other settings "
                            f"({', '.join(changed[:4])} differ); re-run it with the same settings "
                            "to resume, or pass --overwrite to start again")


def _finished(out: Path, row: dict | None) -> bool:
    if row is None:
        return False
    if row.get("status") == "no_wings":
        return True
    name, status = row.get("output", ""), row.get("status")
    root = out if status == "ok" else out / REJECTED
    return (status in ("ok", *FLAGGED) and bool(name) and (root / "images" / name).is_file()
            and (root / "masks" / name).is_file())


def load_rgb(path: Path, max_side: int, background) -> tuple[np.ndarray, np.ndarray]:
    """Read a photo as RGB ``(H, W, 3)`` uint8 plus its inference copy (longer side <= max_side).

    Raises:
        ImageReadError: unreadable, or neither gray nor RGB (e.g. a multispectral stack).
    """
    arr = read_image(path, background=background)
    if arr.shape[-1] not in (1, 3):
        raise ImageReadError(path, f"has {arr.shape[-1]} bands; segmentation needs RGB or gray "
                                   "photos (export an RGB view of the stack)")
    arr = match_channels(arr, 3, path)
    return arr, downscale(arr, max_side)


def _prefetch(root: Path, todo: list[Path], *, max_side: int, background, batch_size: int,
              num_workers: int) -> Iterator[list[tuple[Path, object]]]:
    """Batches of ``(rel, (rgb, small) | ImageReadError)``, read ahead in threads."""
    def load(rel: Path):
        try:
            return load_rgb(root / rel, max_side, background)
        except ImageReadError as e:
            return e

    size = max(1, batch_size)
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        futures = [pool.submit(load, rel) for rel in todo[:2 * size]]
        for start in range(0, len(todo), size):
            batch = todo[start:start + size]
            done = [(rel, futures[start + i].result()) for i, rel in enumerate(batch)]
            futures += [pool.submit(load, rel) for rel in todo[len(futures):start + 3 * size]]
            for i in range(start, start + len(batch)):
                futures[i] = None  # let finished images be freed
            yield done


def _row(rel: Path, name: str, classes, status: str, reason: str = "", shape=None,
         labels: np.ndarray | None = None, scores: dict | None = None, method: str = "") -> dict:
    areas = (np.bincount(labels.ravel(), minlength=len(classes) + 1) if labels is not None
             else np.zeros(len(classes) + 1, int))
    coverage = round(float(areas[1:].sum()) / (shape[0] * shape[1]), 4) if shape else ""
    row = {"image": rel.as_posix(), "output": name if status in ("ok", *FLAGGED) else "",
           "status": status, "reason": reason, "method": method, "coverage": coverage,
           "height": shape[0] if shape else "", "width": shape[1] if shape else ""}
    found = [c for k, c in enumerate(classes, 1) if areas[k] > 0]
    row.update(wings_found=len(found), wings=";".join(found), mask_area=int(areas[1:].sum()))
    for k, c in enumerate(classes, 1):
        row[f"{c}_area"] = int(areas[k])
        score = (scores or {}).get(k)
        row[f"{c}_score"] = "" if score is None else round(score, 4)
    return with_identity(row, name)


def with_identity(row: dict, name: str) -> dict:
    """``row`` with ``specimen``, ``source_image`` and ``group`` (last; a row of an older table
    gets them).

    ``specimen`` is the output name without ``.png``: the photo's path without its extension, or
    with it where two photos collide (``x.jpg``, ``x.tif``), so it is unique. ``group`` is the
    specimen until stage 2 groups photos (``--group-by``).
    """
    row[SPECIMEN] = row.get(SPECIMEN) or without_extension(name)
    row[SOURCE] = row.get(SOURCE) or posix(row["image"])
    row[GROUP] = row.get(GROUP) or row[SPECIMEN]
    return row


def coverage_status(coverage: float, limits: tuple[float, float]) -> tuple[str, str]:
    """``(status, reason)`` of a cut-out covering ``coverage`` of its photo."""
    low, high = limits
    if coverage < low:
        return "low_coverage", (f"foreground is {coverage:.2%} of the photo, below --min-coverage "
                                f"{low:g}: a fragment rather than the specimen")
    if coverage > high:
        return "high_coverage", (f"foreground is {coverage:.2%} of the photo, above --max-coverage "
                                 f"{high:g}: the background was not removed")
    return "ok", ""


def _segment_batch(segmenter: Segmenter, batch, names, out: Path,
                   limits: tuple[float, float] = (0.0, 1.0)) -> list[dict]:
    classes, method = segmenter.classes, segmenter.method
    rows, ready = [], [(rel, data) for rel, data in batch if not isinstance(data, Exception)]
    for rel, data in batch:
        if isinstance(data, Exception):
            rows.append(_row(rel, names[rel], classes, "unreadable", data.reason, method=method))
    try:
        results = segmenter([small for _, (_, small) in ready]) if ready else []
    except Exception as e:  # noqa: BLE001 - e.g. out of GPU memory: retry one image at a time
        if len(ready) == 1:
            return rows + [_row(ready[0][0], names[ready[0][0]], classes, "error",
                                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                                method=method)]
        return rows + [r for item in ready
                       for r in _segment_batch(segmenter, [item], names, out, limits)]
    for (rel, (rgb, _)), res in zip(ready, results):
        labels = to_full_resolution(res.owner, res.fg, rgb.shape[:2])
        if not labels.any():
            rows.append(_row(rel, names[rel], classes, "no_wings",
                             "no wing found" + (" above --score-threshold"
                                                if segmenter.model is not None else ""),
                             rgb.shape[:2], method=method))
            continue
        status, reason = coverage_status(np.count_nonzero(labels) / labels.size, limits)
        root = out if status == "ok" else out / REJECTED
        # mask first: an image implies its mask
        write_label_png(root / "masks" / names[rel], labels, len(classes))
        write_png(root / "images" / names[rel], cutout(rgb, labels))
        rows.append(_row(rel, names[rel], classes, status, reason, rgb.shape[:2], labels,
                         res.scores, method))
    return rows


def segment(s: SegmentSettings) -> dict:
    """Run stage 0 (settings: see ``0-segmentation/segment.py``). Returns the manifest
    (a shard that leaves the merge to others: its marker)."""
    inp, out = Path(s.input), Path(s.output)
    if s.merge:
        return merge(out, finish=finish)
    require_folder(inp, "input folder", "pass your photos folder with --input")
    require_output_folder(out)
    if out.resolve() == inp.resolve() or inp.resolve() in out.resolve().parents:
        raise UserError(f"--output {out} lies inside --input {inp}; choose an output folder "
                        "outside the photos folder")
    if not 0 <= s.score_threshold <= 1 or s.max_side < 32 or s.dilate < 0:
        raise UserError("--score-threshold must be in [0, 1], --max-side >= 32 and --dilate >= 0")
    if not 0 <= s.min_coverage < s.max_coverage <= 1:
        raise UserError("--min-coverage and --max-coverage must satisfy 0 <= min < max <= 1 "
                        f"(got {s.min_coverage:g} and {s.max_coverage:g})")
    shard = parse_shard(s.shard)
    if shard and s.overwrite:
        raise UserError(f"--overwrite with --shard {shard[0]}/{shard[1]} would let each shard delete "
                        f"the others' work; delete {out} first (or run one process with --overwrite)")
    rembg_model, rembg_note = choose_rembg_model(s.rembg_model)
    method, checkpoint, note = choose_method(s.method, s.checkpoint, rembg_model)
    notes = [n for n in (note, rembg_note if "rembg" in method else "") if n]
    for line in notes:
        print(line)
    # the manifest records the method and rembg model used (not given: what was chosen)
    s = replace(s, method=method, rembg_model=rembg_model)
    semantic = run_settings(s)
    _guard(out, semantic, s.overwrite)
    images, not_images = list_files(inp)
    if not images:
        raise UserError(f"no images found in {inp} (looked for JPEG, PNG, TIFF, BMP, WebP, .npy)")
    names = output_names(images)  # on the whole list: shards never collide
    mine = images if shard is None else shard_images(images, *shard)
    table = out / TABLE if shard is None else part_table(out, *shard)
    previous = previous_rows(out / TABLE)
    for part in sorted((out / PARTS).glob("segmentation_*_of_*.csv")):  # any split's work counts
        previous.update(previous_rows(part))
    rows = {rel: with_identity(previous[rel.as_posix()], names[rel]) for rel in mine
            if _finished(out, previous.get(rel.as_posix()))}
    todo = [rel for rel in mine if rel not in rows]
    if shard and (out / MANIFEST).is_file() and all(rel.as_posix() in previous for rel in mine):
        # a requeued shard of a merged output: re-running it would unfinish the whole output
        print(f"skip: shard {shard[0]}/{shard[1]} is done and {out} merged (manifest.json); run "
              "once without --shard to retry unreadable or failed photos")
        return read_manifest(out)
    segmenter = Segmenter(s.method, checkpoint, s.rembg_model, s.score_threshold, s.dilate,
                          s.device)
    for line in segmenter.notes:
        print(line)
    notes += segmenter.notes
    removed = remove_orphans(out, set(names.values()))
    if removed:
        print(f"removed {len(removed)} outputs whose photo is no longer in {inp} (from images/, "
              f"masks/ and {TABLE}): {', '.join(removed[:3])}{' ...' if len(removed) > 3 else ''}")
    which = "" if shard is None else f" (shard {shard[0]}/{shard[1]}: {len(mine)} of them)"
    print(f"{len(images)} images in {inp}{which}: {len(rows)} already done, {len(todo)} to segment "
          f"({s.method})")
    write_text(out / PARTIAL, json.dumps(jsonable(semantic), indent=2) + "\n")
    stale = remove_stale_temps(out)
    if stale:
        print(f"removed {stale} temporary files an interrupted run left in {out}")
    (out / MANIFEST).unlink(missing_ok=True)  # from here on the output is unfinished
    _run(segmenter, s, todo=todo, names=names, rows=rows, images=mine, table=table)
    info = {"settings": semantic, "classes": list(segmenter.classes), "model": segmenter.info,
            "notes": notes, "removed": removed}
    if shard is None:
        manifest = finish(out, inp, info, [rows[rel] for rel in images], not_images)
        shutil.rmtree(out / PARTS, ignore_errors=True)  # an abandoned split's parts: all used
        return manifest
    mark_done(out, *shard, info)
    n, markers = finished_shards(out, shard[1])
    if len(markers) < n:
        print(f"shard {shard[0]}/{n} done; {len(markers)} of {n} shards finished, the last one "
              f"merges (or run segment.py --output {out} --merge)")
        return info
    return merge(out, n, finish=finish)


def finish(out: Path, inp: Path, info: dict, rows: list[dict], not_images: list) -> dict:
    """The table, summary lines, contact sheets and manifest of every photo's ``rows``."""
    write_csv(out / TABLE, pd.DataFrame(rows))
    by = pd.Series([r["status"] for r in rows]).value_counts().to_dict()
    listed = {s: [(r["image"], r["reason"]) for r in rows if r["status"] == s]
              for s in STATUSES[1:]}
    for status, items in listed.items():
        for image, reason in items:
            print(f"{status}: {image}: {reason}")
    flagged = sum(by.get(s, 0) for s in FLAGGED)
    print(f"wrote {by.get('ok', 0)} segmented images to {out}/images and masks/ "
          f"({flagged} with implausible coverage in {out / REJECTED}/, {by.get('no_wings', 0)} "
          f"without wings, {by.get('unreadable', 0)} unreadable, {by.get('error', 0)} failed; "
          f"see {TABLE})")
    sheets = write_contact_sheets(out, rows, inp, REJECTED)
    if sheets:
        print(f"contact sheet: {', '.join(str(p) for p in sheets)} (flagged photos first, framed red)")
    return write_manifest(
        out, "0-segmentation", info["settings"],
        counts={"images": len(rows), **{s: int(by.get(s, 0)) for s in STATUSES},
                "not_images": len(not_images)},
        packages=("opencv-python-headless", "rembg", "onnxruntime"),
        classes=info["classes"], model=info["model"], input=str(inp.resolve()),
        **{f"{s}_files": v for s, v in listed.items()}, removed_outputs=info["removed"],
        contact_sheets=[p.name for p in sheets], notes=info["notes"],
        not_image_files=[(str(p), r) for p, r in not_images])


def remove_orphans(out: Path, expected: set[str]) -> list[str]:
    """Delete ``images/`` and ``masks/`` PNGs of photos no longer in the input; returns their names.

    Without this a re-run after a photo was removed keeps its cut-out, and stage 1 clusters it.
    Rows of such photos leave ``segmentation.csv`` by themselves: it lists the current photos only.
    """
    removed: set[str] = set()
    if not any((out / name).is_file() for name in (TABLE, PARTIAL, MANIFEST)):
        return []  # not a stage 0 output: its files are not ours to delete
    for sub in ("images", "masks", f"{REJECTED}/images", f"{REJECTED}/masks"):
        if (out / sub).is_dir():
            for rel in list_files(out / sub)[0]:
                if rel.as_posix() not in expected:
                    (out / sub / rel).unlink()
                    removed.add(rel.as_posix())
    return sorted(removed)


def _run(segmenter: Segmenter, s: SegmentSettings, *, todo: list[Path], names: dict[Path, str],
         rows: dict[Path, dict], images: list[Path], table: Path) -> None:
    """Segment ``todo`` into ``rows`` (by photo), flushing ``table`` (the photos ``images``) as
    it goes."""
    from tqdm import tqdm

    inp, out = Path(s.input), Path(s.output)

    def flush():
        write_csv(table, pd.DataFrame([rows[rel] for rel in images if rel in rows]))
        saved_so_far(f"{table} lists the {len(rows)} of {len(images)} photos done (the "
                     "same command segments the rest)")

    start, since_flush = time.perf_counter(), 0
    bar = tqdm(total=len(todo), unit="img", disable=None if s.progress else True)
    try:
        for batch in _prefetch(inp, todo, max_side=s.max_side, background=s.background,
                               batch_size=s.batch_size, num_workers=s.num_workers):
            for row in _segment_batch(segmenter, batch, names, out,
                                      (s.min_coverage, s.max_coverage)):
                rows[Path(row["image"])] = row
            bar.update(len(batch))
            since_flush += len(batch)
            if since_flush >= s.flush_every:
                flush()
                since_flush = 0
    finally:
        bar.close()
        flush()
    if todo:
        print(f"segmented {len(todo)} images in {time.perf_counter() - start:.1f} s")
