"""Stage 0 split over processes (``--shard K/N``, or a SLURM array): which photos a shard takes,
where its part of the table goes, and when all parts are there to merge.

Shard K of N (1-based) takes every N-th photo of the sorted list, starting at the K-th, so nested
folders of different sizes spread evenly and the split never depends on timing. Shards write
their cut-outs and masks into the shared ``images/`` and ``masks/`` folders (names never collide:
they are decided on the whole list), their rows into ``parts/segmentation_K_of_N.csv`` (flushed
as they go, so a requeued shard resumes) and, when done, ``parts/done_K_of_N.json`` (settings,
classes, model, notes). The shard that finds all N markers merges the parts into one
``segmentation.csv``, contact sheets and ``manifest.json``, identical to a single-process run,
then removes ``parts/``. Two shards finishing at once may both merge: every file is written
atomically with the same content.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd

from ..cli import UserError
from ..imageio import list_files
from ..outputs import changed_keys, read_csv, read_manifest, write_text

PARTS = "parts"
TABLE = "segmentation.csv"
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def previous_rows(path: Path) -> dict[str, dict]:
    """Rows of a segmentation table by photo (empty when missing or damaged)."""
    if not path.is_file():
        return {}
    try:
        table = read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return {}  # a damaged table only costs recomputation
    return {row["image"]: row for row in table.to_dict("records") if "image" in row}


def parse_shard(spec: str | None, env=os.environ) -> tuple[int, int] | None:
    """``--shard`` to ``(k, n)`` (1 <= k <= n), or None for a single process.

    Args:
        spec: ``K/N``; ``auto`` (the default): the SLURM array task when the job is an array
            (``SLURM_ARRAY_TASK_ID`` - ``SLURM_ARRAY_TASK_MIN`` + 1 of ``SLURM_ARRAY_TASK_COUNT``),
            else None; ``none`` or None: a single process.
        env: the environment to read the SLURM variables from.

    Raises:
        UserError: not ``K/N`` with 1 <= K <= N.
    """
    if spec is None or spec == "none":
        return None
    if spec == "auto":
        task, count = env.get("SLURM_ARRAY_TASK_ID"), env.get("SLURM_ARRAY_TASK_COUNT")
        if not task or not count:
            return None
        first = env.get("SLURM_ARRAY_TASK_MIN", "0")
        spec = f"{int(task) - int(first) + 1}/{count}"
    match = _SPEC.match(spec)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise UserError(f"--shard must be K/N with 1 <= K <= N, e.g. --shard 2/4 (got {spec!r}), "
                        "auto (the SLURM array task) or none")
    return int(match[1]), int(match[2])


def shard_images(images: list[Path], k: int, n: int) -> list[Path]:
    """Shard ``k`` of ``n``: every n-th photo of the sorted list from the k-th (1-based) on."""
    return sorted(images)[k - 1::n]


def part_table(out: Path, k: int, n: int) -> Path:
    return Path(out) / PARTS / f"segmentation_{k}_of_{n}.csv"


def _marker(out: Path, k: int, n: int) -> Path:
    return Path(out) / PARTS / f"done_{k}_of_{n}.json"


def mark_done(out: Path, k: int, n: int, info: dict) -> None:
    """Record that shard ``k`` of ``n`` finished (``info``: settings, classes, model, notes)."""
    write_text(_marker(out, k, n), json.dumps(info, indent=2) + "\n")


def finished_shards(out: Path, n: int | None = None) -> tuple[int, dict[int, dict]]:
    """``(N, {k: marker})`` of the finished shards in ``out/parts/`` (of ``n`` when given).

    Raises:
        UserError: no markers, or markers of different N without ``n``.
    """
    found: dict[int, dict[int, Path]] = {}
    for path in (Path(out) / PARTS).glob("done_*_of_*.json"):
        k, of = map(int, re.findall(r"\d+", path.name)[-2:])
        found.setdefault(of, {})[k] = path
    if n is None:
        if len(found) != 1:
            raise UserError(f"{Path(out) / PARTS}/ holds " + (
                "no finished shard (done_K_of_N.json); run the shards first" if not found else
                f"shards of different splits ({', '.join(f'N={m}' for m in sorted(found))}); "
                "delete the parts of the split you abandoned"))
        n = next(iter(found))
    markers = {k: json.loads(p.read_text(encoding="utf-8")) for k, p in found.get(n, {}).items()}
    return n, markers


def check_complete(out: Path, n: int, markers: dict[int, dict]) -> dict:
    """The common marker of a complete split (settings compared).

    Raises:
        UserError: a shard is missing or two shards ran with other settings.
    """
    missing = [k for k in range(1, n + 1) if k not in markers]
    if missing:
        raise UserError(f"{Path(out) / PARTS}/: shard(s) {', '.join(f'{k}/{n}' for k in missing)} "
                        "not finished; run them (same command with --shard K/N), then --merge")
    first = markers[1]
    for k, marker in markers.items():
        changed = changed_keys(first["settings"], marker["settings"])
        if changed:
            raise UserError(f"shards 1/{n} and {k}/{n} in {Path(out) / PARTS}/ ran with other "
                            f"settings ({', '.join(changed[:4])} differ); re-run the odd one")
    return first


def merge(out: Path, n: int | None = None, *, finish) -> dict:
    """Merge the parts of a finished split (see above) into the single-process output.

    Args:
        finish: the stage's ``finish(out, inp, info, rows, not_images)`` (table, sheets, manifest).
    """

    if not (Path(out) / PARTS).is_dir() and read_manifest(out) is not None:
        print(f"skip: {out} is merged already (manifest.json, no {PARTS}/)")
        return read_manifest(out)

    n, markers = finished_shards(out, n)
    info = check_complete(out, n, markers)
    inp = Path(info["settings"]["input"])
    images, not_images = list_files(inp)
    rows: dict[str, dict] = {}
    for k in range(1, n + 1):
        rows.update(previous_rows(part_table(out, k, n)))
    missing = [rel.as_posix() for rel in images if rel.as_posix() not in rows]
    if missing:
        raise UserError(f"the shards' tables in {out / PARTS}/ lack {len(missing)} photo(s) of "
                        f"{inp} ({', '.join(missing[:3])}); re-run the shards with the same photos")
    info = {**info, "notes": list(dict.fromkeys(x for m in markers.values() for x in m["notes"])),
            "removed": sorted({x for m in markers.values() for x in m["removed"]})}
    print(f"merging {n} shards into {out / TABLE}")
    manifest = finish(out, inp, info, [rows[rel.as_posix()] for rel in images], not_images)
    shutil.rmtree(out / PARTS, ignore_errors=True)
    return manifest
