"""Stage 4: frozen-backbone embeddings of every image, as CSV, plus their PCA projection.

:func:`run_embedding` is the stage (``4-embed/embed.py`` and stage 5 call it with an
:class:`~wingclr.embed.settings.EmbedSettings`); the images are read and embedded by
:func:`wingclr.features.embed_images`, which stage 3's kNN monitor and stage 5's baselines share.

Memory: the images stream through a DataLoader one batch at a time; only the ``(N, D)`` float32
output array is held, so 100 000 ResNet-50 embeddings need ~0.8 GB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..train.checkpoint_files import load_backbone
from ..cli import UserError, check_gpu_request, check_minimum, require_output_folder, saved_so_far
from ..features import PCA_MIN_VARIANCE, embed_images, image_table, pca_projection
from ..identity import COLUMNS as IDENTITY
from ..morphospace import write_morphospace
from ..outputs import (MANIFEST, atomic_path, check_finished, escape_formulas, file_digest,
                       read_manifest, write_csv, write_manifest)
from ..plotting import plot_pca
from ..untrusted import path_inside
from .settings import EmbedSettings


def check_embed(s: EmbedSettings, *, output_flag: str = "--output") -> None:
    """Stage 4's flags, checked before any checkpoint or image is read (``output_flag``: the
    caller's name for ``s.output``)."""
    check_minimum(("--batch-size", s.batch_size, 1), ("--num-workers", s.num_workers, 0))
    check_gpu_request("--device", s.device)
    require_output_folder(s.output, output_flag)


def run_embedding(s: EmbedSettings, *, output_flag: str = "--output") -> list[Path]:
    """Stage 4: check the flags, then embed each run of ``s.checkpoints`` (every finished run
    under ``s.training_dir`` when empty) into ``s.output/<run>/``; finished ones are skipped.

    Stage 5 embeds a run it is given as a checkpoint through here too, with its own
    :class:`EmbedSettings` (``output_flag="--embeddings"`` names its flag in errors).

    Returns:
        The run folders under ``s.output``, finished or skipped.
    """
    check_embed(s, output_flag=output_flag)
    runs = resolve_runs(list(s.checkpoints), s.training_dir)
    for done, (name, ckpt) in enumerate(runs):
        saved_so_far(f"{done} of {len(runs)} runs embedded in {s.output} (a run folder "
                     "without manifest.json is unfinished)")
        embed_run(name, ckpt, data=s.data, output=s.output, batch_size=s.batch_size,
                  num_workers=s.num_workers, device=s.device, cache_dir=s.cache_dir,
                  quiet=s.quiet, overwrite=s.overwrite)
    saved_so_far("")  # stage 5 goes on after embedding: its own stop message again
    return [Path(s.output) / name for name, _ in runs]


def resolve_runs(paths: list[Path], training_dir: Path) -> list[tuple[str, Path]]:
    """``(run name, checkpoint)`` for each checkpoint file or training-run folder given.

    With no paths, every finished run under ``training_dir``.
    """
    if not paths:
        paths = sorted(p.parent for p in Path(training_dir).glob(f"*/{MANIFEST}"))
        if not paths:
            raise UserError(f"no finished training runs in {training_dir}; run 3-training/train.py "
                            "or pass --checkpoints")
    runs = []
    for path in map(Path, paths):
        if path.is_file():
            name = path.parent.name if path.name == "last.ckpt" else path.stem
            runs.append((name, path))
        elif (path / MANIFEST).exists():
            name = read_manifest(path).get("checkpoint") or f"{path.name}.ckpt"
            runs.append((path.name, path_inside(path, name, source=path / MANIFEST, entry="checkpoint")))
        elif path.is_dir():
            raise UserError(f"{path} holds no finished run (no manifest.json); finish its training "
                            "or pass its last.ckpt explicitly")
        else:
            raise UserError(f"checkpoint {path} does not exist; pass a .ckpt file or a run folder "
                            f"under {training_dir}")
    return runs


def checkpoint_stamp(ckpt: Path) -> dict:
    """Size and modification time of a checkpoint: they change when stage 3 re-trains the run."""
    st = Path(ckpt).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def embedded_other_weights(out: Path, ckpt: Path) -> bool:
    """True when ``out``'s finished embeddings came from an earlier version of ``ckpt``."""
    manifest = read_manifest(out)
    if manifest is None or not Path(ckpt).is_file():  # a deleted checkpoint keeps its embeddings
        return False
    old = manifest.get("checkpoint_file")
    if old is None:  # written before stage 4 stamped checkpoints: compare times instead
        return Path(ckpt).stat().st_mtime_ns > (out / MANIFEST).stat().st_mtime_ns
    return old != checkpoint_stamp(ckpt)


def split_digest(data: Path) -> str | None:
    """Digest of ``data``'s split.csv (None: not a stage 2 output), recorded in the manifest."""
    split_csv = Path(data) / "split.csv"
    return file_digest(split_csv) if split_csv.is_file() else None


def embedded_other_split(out: Path, data: Path) -> bool:
    """True when ``data``'s split.csv differs from the one ``out``'s finished embeddings were made
    from (stage 2 re-run with --update or --overwrite); False when either was not recorded."""
    old = (read_manifest(out) or {}).get("split_csv")
    new = split_digest(data) if old else None
    return new is not None and old != new


def write_matrix_csv(path: Path, ids: pd.DataFrame, values: np.ndarray, columns: list[str],
                     chunk: int = 2000, tail: pd.DataFrame | None = None) -> None:
    """Write ``ids`` columns, ``values`` (float, 6 significant digits), then ``tail`` columns
    (same rows as ``ids``), in chunks, atomically; text cells as :func:`~wingclr.outputs.write_csv`
    writes them (no spreadsheet formulas)."""
    tail = pd.DataFrame(index=ids.index) if tail is None else tail
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        for start in range(0, len(ids), chunk):
            part = ids.iloc[start:start + chunk].reset_index(drop=True)
            part = pd.concat([part, pd.DataFrame(values[start:start + chunk], columns=columns),
                              tail.iloc[start:start + chunk].reset_index(drop=True)], axis=1)
            escape_formulas(part).to_csv(f, index=False, header=start == 0, float_format="%.6g")
        if len(ids) == 0:
            f.write(",".join(escape_formulas(pd.DataFrame(columns=[*ids.columns, *columns,
                                                                   *tail.columns])).columns) + "\n")


def embed_run(name: str, ckpt: Path, *, data: Path, output: Path, batch_size: int = 64,
              num_workers: int | None = None, device: str = "auto", cache_dir: Path | None = None,
              quiet: bool = False, overwrite: bool = False) -> dict | None:
    """Embed the images of ``data`` with one checkpoint into ``output/<name>/``.

    Args:
        data: stage 2 output (split.csv + unlabeled/) or a folder of cluster folders.
        cache_dir: stage 3's decode-once cache; read when it holds exactly these images.
        overwrite: embed again even when the folder is finished with the same inputs.

    Returns:
        The manifest, or None when the folder was finished and is skipped.
    """
    cli_args = {"data": data, "output": output, "batch_size": batch_size, "num_workers": num_workers,
                "device": device, "cache_dir": cache_dir, "quiet": quiet, "overwrite": overwrite}
    out = Path(output) / name
    # what defines the output: the weights and the images (not batch size, device, ...)
    run_args = {"checkpoint": str(Path(ckpt).resolve()), "data": str(Path(data).resolve())}
    if check_finished(out, run_args, overwrite, "embedding"):
        if embedded_other_weights(out, ckpt):
            print(f"note: {ckpt} changed since {out} was embedded (re-trained); embedding it again")
        elif embedded_other_split(out, data):
            print(f"note: {Path(data) / 'split.csv'} changed since {out} was embedded (stage 2 "
                  "--update or --overwrite); embedding it again")
        else:
            print(f"skip: {out} is finished (manifest.json); pass --overwrite to embed again")
            return None
    # stamped before reading, so a checkpoint replaced meanwhile is embedded again next time
    stamp = checkpoint_stamp(ckpt) if Path(ckpt).is_file() else None
    split_stamp = split_digest(data)
    backbone, meta = load_backbone(ckpt)
    root, table = image_table(data)
    feats, ok = embed_images(backbone, meta, root, table["image"].tolist(), batch_size, num_workers,
                             device, progress=not quiet, cache_dir=cache_dir)
    failed = table.loc[~ok, "image"].tolist()
    table, feats = table.loc[ok].reset_index(drop=True), feats[ok]
    if len(table) < 2:
        raise UserError(f"fewer than 2 readable images under {root}; nothing to embed")
    (out / MANIFEST).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "embeddings.npy", feats)  # fast reload for stage 5; the CSV is for people
    # image, cluster, split first (as before the identity columns), specimen, source_image, group last
    first, last = table[["image", "cluster", "split"]], table[IDENTITY]
    write_matrix_csv(out / "embeddings.csv", first, feats,
                     [f"emb_{i}" for i in range(feats.shape[1])], tail=last)
    scores, ratio, k = pca_projection(feats)
    write_matrix_csv(out / "embeddings_pca.csv", first, scores, [f"PC{i + 1}" for i in range(k)],
                     tail=last)
    write_csv(out / "pca_variance.csv", pd.DataFrame({
        "component": [f"PC{i + 1}" for i in range(len(ratio))], "explained_variance_ratio": ratio,
        "cumulative": np.cumsum(ratio), "kept": ratio > PCA_MIN_VARIANCE}))
    plot_pca(scores, table["cluster"], ratio, out / "pca.png", name)
    try:  # thumbnails at their PC scores; a picture never fails the stage
        write_morphospace(out, root, meta)
    except Exception as e:  # noqa: BLE001
        print(f"note: {name}: morphospace.png not drawn ({type(e).__name__}: {str(e)[:200]})")
    print(f"{name}: {len(table)} images x {feats.shape[1]} dims, {k} PCA axes > 0.5 % -> {out}")
    return write_manifest(
        out, "4-embed", run_args, packages=("scikit-learn",),
        counts={"images": len(table), "dims": int(feats.shape[1]), "pca_axes": k,
                "unreadable": len(failed)},
        unreadable=failed, model=meta, run_name=name, cli_args=cli_args, checkpoint_file=stamp,
        embeddings_csv=file_digest(out / "embeddings.csv"), split_csv=split_stamp)
