"""Nothing silently wrong, nothing lost: bad or changed inputs, bad flags, full disks, stops and
killed runs in stages 0-5, one test per case, named after what it checks."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import (REPO, TINY_TRAIN, assert_one_line_error, fake_checkpoint, fake_embeddings, fake_meta,
                      run_cli, run_stage)
from wingclr.imageio import ImageReadError, image_channels, list_files, read_image, try_read


def _tree_with_loops(root, loops: int):
    """``root/a/{x,y}.png`` plus ``loops`` links back up the tree (``root/a/up_<i> -> ..``)."""
    (root / "a").mkdir(parents=True)
    for name in ("x", "y"):
        Image.new("RGB", (8, 8), (200, 30, 30)).save(root / "a" / f"{name}.png")
    for i in range(loops):
        os.symlink("..", root / "a" / f"up_{i}")
    return root


def test_symlink_loops(tmp_path, demo_set):
    # one loop: each photo listed once, the link reported instead of followed
    images, skipped = list_files(_tree_with_loops(tmp_path / "one", 1))
    assert [p.as_posix() for p in images] == ["a/x.png", "a/y.png"]
    assert [str(p) for p, _ in skipped] == [os.path.join("a", "up_0")]
    # two loops used to recurse exponentially: listing must finish at once
    code = f"from wingclr.imageio import list_files; print(len(list_files({str(tmp_path / 'two')!r})[0]))"
    _tree_with_loops(tmp_path / "two", 2)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "2", done.stderr[-2000:]
    # a loop inside a cluster folder: stage 2 keeps each image once, never in train and validation
    clusters = tmp_path / "clusters"
    shutil.copytree(demo_set / "clusters", clusters)
    os.symlink("..", clusters / "band" / "loop")
    out = tmp_path / "2-dataset"
    run_stage("2-create_dataset/create_dataset.py", "--input", clusters, "--output", out)
    split = pd.read_csv(out / "split.csv")
    assert len(split) == 30 and not split.image.str.contains("loop").any()
    real = {s: {os.path.realpath(clusters / p) for p in split.image[split.split == s]}
            for s in ("train", "validation")}
    assert not real["train"] & real["validation"]


def _garbage_tiff(path):
    """A valid little-endian TIFF header whose body is garbage (here: nothing at all)."""
    path.write_bytes(b"II*\x00\x08\x00\x00\x00")
    return path


def test_garbage_tiff_is_reported_and_skipped(tmp_path, demo_set):
    bad = _garbage_tiff(tmp_path / "bad.tif")
    with pytest.raises(ImageReadError, match="bad.tif"):
        read_image(bad)
    with pytest.raises(ImageReadError):
        image_channels(bad)
    assert try_read(bad)[0] is None
    # stage 2 with one such file in a cluster folder: reported and skipped, not aborted
    clusters = tmp_path / "clusters"
    shutil.copytree(demo_set / "clusters", clusters)
    _garbage_tiff(clusters / "band" / "scan.tif")
    out = tmp_path / "2-dataset"
    run_stage("2-create_dataset/create_dataset.py", "--input", clusters, "--output", out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["images"] == 30
    assert [p for p, _ in manifest["skipped_files"]] == [os.path.join("band", "scan.tif")]


def test_file_input_and_format_by_content(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (16, 12), (10, 120, 240)).save(photo, format="JPEG")
    proc = run_cli("0-segmentation/segment.py", "--input", photo, "--output", tmp_path / "out")
    assert_one_line_error(proc, str(photo), "is a file", "folder")
    proc = run_cli("2-create_dataset/create_dataset.py", "--input", photo,
                   "--output", tmp_path / "out2")
    assert_one_line_error(proc, str(photo), "is a file", "folder")
    # the decoder follows the content, not the name
    for name in ("jpeg_named.TIF", "photo.jpe", "photo.jfif"):
        shutil.copy(photo, tmp_path / name)
        assert read_image(tmp_path / name).shape == (12, 16, 3), name
        assert image_channels(tmp_path / name) == 3
    import tifffile

    tifffile.imwrite(tmp_path / "tiff_named.png", np.zeros((5, 6, 4), np.uint8), planarconfig="contig")
    assert read_image(tmp_path / "tiff_named.png").shape == (5, 6, 4)
    np.save(tmp_path / "cube.npy", np.zeros((5, 6, 7), np.uint8))
    shutil.move(tmp_path / "cube.npy", tmp_path / "cube_named.tif")
    assert read_image(tmp_path / "cube_named.tif").shape == (5, 6, 7)
    images, _ = list_files(tmp_path)
    assert {p.name for p in images} >= {"photo.jpe", "photo.jfif"}


def _embed(ckpt, dataset_dir, out, capsys) -> str:
    """Stage 4 in-process; returns what it printed."""
    capsys.readouterr()
    run_stage("4-embed/embed.py", "--checkpoints", ckpt, "--data", dataset_dir, "--output", out,
              "--num-workers", "0", "--quiet", "--cache-dir", out / "no-cache")
    return capsys.readouterr().out


def _one_line_user_error(call, *needles) -> str:
    from wingclr.cli import UserError

    with pytest.raises(UserError) as e:
        call()
    text = str(e.value)
    assert "\n" not in text and all(n in text for n in needles), text
    return text


def test_retrained_checkpoint_is_embedded_again(tmp_path, dataset_dir, capsys):
    ckpt = fake_checkpoint(tmp_path / "run.ckpt", seed=0)
    out = tmp_path / "4-embeddings"
    _embed(ckpt, dataset_dir, out, capsys)
    first = np.load(out / "run" / "embeddings.npy")
    fake_checkpoint(ckpt, seed=1)  # stage 3 --overwrite re-trained the run in place
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    printed = _embed(ckpt, dataset_dir, out, capsys)
    assert "skip:" not in printed and "changed" in printed, printed
    assert not np.allclose(np.load(out / "run" / "embeddings.npy"), first)
    assert "skip:" in _embed(ckpt, dataset_dir, out, capsys)  # unchanged since: finished


def test_checkpoint_metadata_disagrees_with_weights(tmp_path, dataset_dir, capsys):
    four = fake_checkpoint(tmp_path / "four.ckpt", 0, in_chans=4)  # metadata says 3
    text = _one_line_user_error(lambda: _embed(four, dataset_dir, tmp_path / "out", capsys),
                                "four.ckpt", "resnet18", "3 channels", "4 channels")
    assert "load_state_dict" not in text
    r50 = fake_checkpoint(tmp_path / "r50.ckpt", 0, meta=fake_meta("resnet50"))
    _one_line_user_error(lambda: _embed(r50, dataset_dir, tmp_path / "out", capsys),
                         "r50.ckpt", "resnet50", "3 channels")


def test_outputs_of_removed_photos_are_removed(tmp_path, demo_set, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in sorted(p.name for p in (demo_set / "specimens").iterdir())[:4]:
        shutil.copy(demo_set / "specimens" / name, photos / name)
    out = tmp_path / "seg"
    args = ("--input", photos, "--output", out, "--method", "threshold", "--no-progress")
    run_stage("0-segmentation/segment.py", *args)
    gone = sorted(photos.iterdir())[0].name
    assert (out / "images" / gone).is_file()
    (photos / gone).unlink()
    capsys.readouterr()
    manifest = run_stage("0-segmentation/segment.py", *args)
    printed = capsys.readouterr().out
    assert not (out / "images" / gone).exists() and not (out / "masks" / gone).exists()
    assert gone not in set(pd.read_csv(out / "segmentation.csv").image)
    assert [line for line in printed.splitlines() if gone in line and "removed" in line], printed
    assert manifest["removed_outputs"] == [gone] and manifest["counts"]["images"] == 3


def _evaluate(emb_dir, out, *extra):
    run_stage("5-evaluation/evaluate.py", "--runs", emb_dir, "--embeddings", emb_dir.parent,
              "--output", out, "--no-baselines", "--no-umap", "--num-workers", "0", *extra)
    return pd.read_csv(out / emb_dir.name / "predictions.csv")


def test_sorted_embeddings_csv(tmp_path, dataset_dir):
    from wingclr.evaluate.inputs import load_embeddings
    from wingclr.outputs import read_manifest

    emb, vectors = fake_embeddings(tmp_path / "4" / "run", dataset_dir)
    before = _evaluate(emb, tmp_path / "5a")
    csv = pd.read_csv(emb / "embeddings.csv")
    by_name = csv.image.str.rsplit("/", n=1).str[-1].argsort(kind="stable")  # a spreadsheet sort
    csv = csv.iloc[by_name].reset_index(drop=True)
    csv.to_csv(emb / "embeddings.csv", index=False)
    ids, feats = load_embeddings(emb, read_manifest(emb))
    for image, vector in zip(ids.image, feats):
        np.testing.assert_allclose(vector, vectors[image], rtol=1e-5, atol=1e-6)
    after = _evaluate(emb, tmp_path / "5b")
    pd.testing.assert_frame_equal(before.sort_values("image", ignore_index=True),
                                  after.sort_values("image", ignore_index=True))
    # an edited number is used, not the stale .npy value
    csv.loc[3, "emb_5"] = 42.0
    csv.to_csv(emb / "embeddings.csv", index=False)
    ids, feats = load_embeddings(emb, read_manifest(emb))
    assert feats[ids.image.tolist().index(csv.image[3]), 5] == 42.0
    # a blanked cell is refused in one line naming the image and the column
    csv["emb_2"] = csv["emb_2"].astype(object)
    csv.loc[7, "emb_2"] = ""
    csv.to_csv(emb / "embeddings.csv", index=False)
    _one_line_user_error(lambda: load_embeddings(emb, read_manifest(emb)), "emb_2", csv.image[7])


def test_partial_labels_are_counted_and_refused(tmp_path, dataset_dir, capsys):
    from wingclr.evaluate.inputs import attach_labels

    emb, _ = fake_embeddings(tmp_path / "4" / "run", dataset_dir)
    ids = pd.read_csv(emb / "embeddings.csv", dtype=str)[["image", "cluster", "split"]]
    labels = tmp_path / "labels.csv"
    ids.iloc[:10].rename(columns={"cluster": "label"}).to_csv(labels, index=False)
    capsys.readouterr()
    _one_line_user_error(lambda: _evaluate(emb, tmp_path / "5", "--labels", labels),
                         "10 of 30", str(labels), "--allow-partial-labels")
    assert "labels: 10 of 30" in capsys.readouterr().out
    assert (attach_labels(ids, labels, allow_partial=True) != "").sum() == 10
    printed = capsys.readouterr().out
    assert "10 of 30" in printed and ids.image[10] in printed  # names images without a label
    ids.iloc[:20].rename(columns={"cluster": "label"}).to_csv(labels, index=False)
    assert (attach_labels(ids, labels) != "").sum() == 20  # most matched: accepted, still counted
    assert "20 of 30" in capsys.readouterr().out


def test_spreadsheet_saved_embeddings_csv(tmp_path, dataset_dir):
    from wingclr.evaluate.inputs import load_embeddings

    emb, vectors = fake_embeddings(tmp_path / "4" / "run", dataset_dir)
    csv = pd.read_csv(emb / "embeddings.csv")
    csv.rename(columns={"cluster": "Cluster"}).to_csv(emb / "embeddings.csv", index=False)
    ids, feats = load_embeddings(emb)
    assert list(ids.columns) == ["image", "cluster", "split", "specimen", "source_image", "group"]
    # ;-separated with decimal commas, as a German/French spreadsheet saves it
    csv.to_csv(emb / "embeddings.csv", index=False, sep=";", decimal=",")
    ids, feats = load_embeddings(emb)
    for image, vector in zip(ids.image, feats):
        np.testing.assert_allclose(vector, vectors[image], rtol=1e-5, atol=1e-6)
    _evaluate(emb, tmp_path / "5")
    csv.rename(columns={"cluster": "class"}).to_csv(emb / "embeddings.csv", index=False)
    _one_line_user_error(lambda: load_embeddings(emb), "embeddings.csv", "image, cluster, split")


# ---- stage 3 and the flags of stages 2-5 ----

TRAIN = "3-training/train.py"


def _train(dataset_dir, out, *extra):
    """Stage 3 in-process on the tiny set (1 epoch unless ``extra`` says otherwise)."""
    from conftest import TINY_TRAIN

    return run_stage(TRAIN, "--data", dataset_dir, "--output", out, "--epochs", "1",
                     *TINY_TRAIN, *extra)


def _cli_in_process(capsys, relpath, *argv) -> tuple[int, str]:
    """A stage through :func:`wingclr.cli.run` in this process: ``(exit status, stderr)``."""
    from conftest import load_stage
    from wingclr import cli

    module = load_stage(relpath)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.run(module.main, module.get_args_parser(), [str(a) for a in argv])
    return e.value.code, capsys.readouterr().err


def _one_error_line(err: str, *needles) -> str:
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def _stop_after_epoch(monkeypatch, epoch: int, error=RuntimeError("killed")):
    """Make stage 3 die right after saving epoch ``epoch`` (a kill between epochs)."""
    from wingclr.train.run import EpochCheckpoint

    saved = EpochCheckpoint.on_train_epoch_end

    def end(self, trainer, module):
        saved(self, trainer, module)
        if trainer.current_epoch + 1 >= epoch:
            raise error

    monkeypatch.setattr(EpochCheckpoint, "on_train_epoch_end", end)


def test_overwrite_keeps_finished_run_until_replacement_finishes(dataset_dir, tmp_path,
                                                                         monkeypatch, capsys):
    out = tmp_path / "runs"
    _train(dataset_dir, out, "--run-name", "r")
    run = out / "r"
    finished = {name: (run / name).read_bytes() for name in ("r.ckpt", "manifest.json")}
    _stop_after_epoch(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="killed"):  # --overwrite killed after one epoch
        _train(dataset_dir, out, "--run-name", "r", "--overwrite", "--seed", "1", "--epochs", "2",
               "--save-every-min", "0")
    monkeypatch.undo()
    assert {name: (run / name).read_bytes() for name in finished} == finished  # nothing lost
    assert (out / ".r.new" / "last.ckpt").is_file()
    capsys.readouterr()
    _train(dataset_dir, out, "--run-name", "r")  # the finished run is still there, finished
    printed = capsys.readouterr().out
    assert "skip:" in printed and ".r.new" in printed, printed
    # the same command again resumes the replacement, then swaps it in
    capsys.readouterr()
    _train(dataset_dir, out, "--run-name", "r", "--overwrite", "--seed", "1", "--epochs", "2")
    printed = capsys.readouterr().out
    assert "resuming r from" in printed and "replaced" in printed, printed
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["args"]["seed"] == 1 and manifest["counts"]["epochs"] == 2
    assert (run / "r.ckpt").read_bytes() != finished["r.ckpt"]
    assert pd.read_csv(run / "metrics.csv").epoch.tolist() == [0, 1, 2]  # epoch 1 not trained twice (0: the monitor's start)
    assert sorted(p.name for p in out.iterdir()) == ["r"]  # no replacement, old copy or lock left


def test_output_file_read_only_and_full_disk(dataset_dir, demo_set, tmp_path, monkeypatch,
                                                    capsys):
    import errno

    import pytorch_lightning as pl

    a_file = tmp_path / "taken.txt"
    a_file.write_text("not a folder")
    for call in (lambda: run_stage("2-create_dataset/create_dataset.py", "--input",
                                   demo_set / "clusters", "--output", a_file),
                 lambda: _train(dataset_dir, a_file),
                 lambda: _train(dataset_dir, a_file / "runs")):
        _one_line_user_error(call, str(a_file), "is a file")

    # stage 2: a read-only output folder and a full disk; no half-copied image stays behind
    for code, words in ((errno.EROFS, "read-only"), (errno.ENOSPC, "free disk space")):
        def copy(src, dst, code=code):
            Path(dst).write_bytes(b"half")
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(shutil, "copy2", copy)
        out = tmp_path / f"2-dataset-{code}"
        status, err = _cli_in_process(capsys, "2-create_dataset/create_dataset.py",
                                      "--input", demo_set / "clusters", "--output", out)
        assert status == 2
        _one_error_line(err, "cannot write", str(out / "unlabeled"), words)
        assert not [p for p in out.rglob("*") if p.is_file()]
        monkeypatch.undo()

    # stage 3: the disk fills while last.ckpt is written (Lightning writes no file name in the error)
    def save(self, filepath, weights_only=False, storage_options=None):
        Path(filepath).write_bytes(b"partial checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", save)
    from conftest import TINY_TRAIN

    runs = tmp_path / "runs"
    status, err = _cli_in_process(capsys, TRAIN, "--data", dataset_dir, "--output", runs,
                                  "--epochs", "1", "--run-name", "full", *TINY_TRAIN, "--keep-last")
    assert status == 2
    _one_error_line(err, "cannot write", str(runs / "full" / "last.ckpt"), "free disk space")
    assert not runs.exists()  # neither .tmp-last.ckpt nor an empty run folder is left


def test_bad_flags_are_refused_before_any_work(dataset_dir, tmp_path):
    import torch

    out = tmp_path / "out"
    bad_training = [("--num-workers", "-1"), ("--lr", "-1"), ("--warmup-epochs", "-1"),
                    ("--devices", "0"), ("--num-nodes", "0")]
    if not torch.cuda.is_available():
        bad_training.append(("--accelerator", "gpu"))
    for flag, value in bad_training:
        _one_line_user_error(lambda: _train(dataset_dir, out, flag, value), flag)
    for flag, value in [("--batch-size", "0"), ("--batch-size", "-1"), ("--num-workers", "-1")] + (
            [] if torch.cuda.is_available() else [("--device", "cuda")]):
        _one_line_user_error(lambda: run_stage("4-embed/embed.py", "--checkpoints", tmp_path / "x.ckpt",
                                               "--data", dataset_dir, "--output", out, flag, value), flag)
    emb, _ = fake_embeddings(tmp_path / "4" / "run", dataset_dir)
    for extra in (("--knn-k", "0"), ("--knn-k", "-1"), ("--num-workers", "-1"),
                  ("--folds", "1"), ("--labels", tmp_path / "missing.csv")):
        _one_line_user_error(lambda: _evaluate(emb, out, *extra), extra[0])
    assert not out.exists()  # refused before anything was written


def test_sigterm_saves_stops_workers_and_exits_143(dataset_dir, tmp_path):
    """SIGTERM to the whole process group (workers included): save, no traceback, exit 143."""
    import signal
    import time

    import torch

    from conftest import TINY_TRAIN

    out = tmp_path / "runs"
    args = [sys.executable, str(REPO / TRAIN), "--data", str(dataset_dir), "--output", str(out),
            "--epochs", "5", "--run-name", "term", *TINY_TRAIN, "--num-workers", "2",
            "--save-every-min", "0"]
    last = out / "term" / "last.ckpt"
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, output[-3000:]
    assert "Traceback" not in output and "DataLoader worker" not in output, output[-3000:]
    assert "SIGTERM: saved" in output and not (out / "term" / "manifest.json").exists()
    steps = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    rerun = subprocess.run(args, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    final = torch.load(out / "term" / "term.ckpt", map_location="cpu", weights_only=False)
    assert 0 < steps < final["global_step"] == 5 * (30 // 8)
    assert pd.read_csv(out / "term" / "metrics.csv").epoch.tolist() == [0, 1, 2, 3, 4, 5]


def test_a_run_folder_is_trained_by_one_command_at_a_time(dataset_dir, tmp_path, capsys):
    import socket

    out = tmp_path / "runs"
    out.mkdir()
    lock = out / ".r.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                "started": "2026-01-01T00:00:00"}))  # a live process trains r
    _one_line_user_error(lambda: _train(dataset_dir, out, "--run-name", "r"),
                         str(out / "r"), f"pid {os.getpid()}", str(lock))
    assert not (out / "r").exists() and lock.exists()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid is free now: a crashed trainer's stale lock
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid}))
    capsys.readouterr()
    _train(dataset_dir, out, "--run-name", "r")
    assert "taking over the lock" in capsys.readouterr().out
    assert (out / "r" / "manifest.json").is_file() and not lock.exists()


def test_moved_folders_hold_the_same_run(dataset_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    data = tmp_path / "data"
    shutil.copytree(dataset_dir, data)
    _train(data, out, "--run-name", "r", "--keep-last")  # kept: it resumes from it below
    moved_data, moved_out = tmp_path / "elsewhere" / "data", tmp_path / "elsewhere" / "runs"
    moved_data.parent.mkdir()
    shutil.move(data, moved_data)
    shutil.move(out, moved_out)
    capsys.readouterr()
    _train(moved_data, moved_out, "--run-name", "r")
    assert "skip:" in capsys.readouterr().out  # finished, not "other settings"
    (moved_out / "r" / "manifest.json").unlink()  # interrupted: it resumes from last.ckpt
    _train(moved_data, moved_out, "--run-name", "r")
    assert "resuming r from" in capsys.readouterr().out
    victim = next((moved_data / "unlabeled").rglob("*.png"))
    victim.unlink()  # another image list is another run
    _one_line_user_error(lambda: _train(moved_data, moved_out, "--run-name", "r"),
                         "dataset_images", "--overwrite")


def test_truncated_checkpoint_has_a_way_back(dataset_dir, tmp_path, capsys):
    import torch

    out = tmp_path / "runs"
    _train(dataset_dir, out, "--run-name", "r", "--keep-last")
    ckpt = out / "r" / "r.ckpt"
    steps = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[:len(data) // 2])
    emb = tmp_path / "4"
    text = _one_line_user_error(lambda: _embed(out / "r", dataset_dir, emb, capsys),
                                str(ckpt), "3-training/train.py")
    assert "delete it to start" not in text
    capsys.readouterr()
    _train(dataset_dir, out, "--run-name", "r", "--keep-last")  # the same command rebuilds it
    assert "rebuilding" in capsys.readouterr().out
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == steps
    _embed(out / "r", dataset_dir, emb, capsys)  # stage 4 works again
    ckpt.unlink()  # the advice of old: delete it; stage 4 names the command, stage 3 rebuilds
    _one_line_user_error(lambda: _embed(out / "r", dataset_dir, tmp_path / "4b", capsys),
                         str(ckpt), "does not exist", "3-training/train.py")
    _train(dataset_dir, out, "--run-name", "r", "--keep-last")
    _embed(out / "r", dataset_dir, tmp_path / "4b", capsys)
    assert (tmp_path / "4b" / "r" / "manifest.json").is_file()
    # without --keep-last nothing is left to rebuild from: one line asks for --overwrite
    (out / "r" / "last.ckpt").unlink()
    ckpt.write_bytes(data[:len(data) // 2])
    _one_line_user_error(lambda: _embed(out / "r", dataset_dir, tmp_path / "4c", capsys),
                         str(ckpt), "--overwrite")
    _one_line_user_error(lambda: _train(dataset_dir, out, "--run-name", "r"),
                         str(ckpt), "no whole last.ckpt", "--overwrite")
    _train(dataset_dir, out, "--run-name", "r", "--overwrite")
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == steps


def test_nan_stop_is_worded_for_what_exists(dataset_dir, tmp_path, monkeypatch):
    from wingclr.train.simclr import NonFiniteLossError, SimCLR

    out = tmp_path / "runs"
    text = _one_line_user_error(lambda: _train(dataset_dir, out, "--lr", "1e30", "--epochs", "3"),
                                "loss became", "before any epoch was saved", "--lr (now 1e+30)")
    assert "last.ckpt" not in text and not out.exists()
    for flag in ("--lr", "--temperature"):
        _one_line_user_error(lambda: _train(dataset_dir, out, flag, "nan"), flag)
    step = SimCLR.training_step

    def second_epoch_nan(self, batch, batch_idx):
        if self.current_epoch >= 1:
            raise NonFiniteLossError(f"loss became nan at epoch {self.current_epoch}, step {batch_idx}")
        return step(self, batch, batch_idx)

    monkeypatch.setattr(SimCLR, "training_step", second_epoch_nan)
    _one_line_user_error(lambda: _train(dataset_dir, out, "--epochs", "3", "--run-name", "n",
                                        "--save-every-min", "0"),
                         str(out / "n" / "last.ckpt"), "keeps epoch 1", "--overwrite")


def test_input_size_has_one_rule(dataset_dir, tmp_path):
    for flag in ("--input-size", "--cache-size"):
        _one_line_user_error(lambda: _train(dataset_dir, tmp_path / "runs", flag, "16"),
                             flag, "at least 32")
    assert not (tmp_path / "runs").exists()
    from wingclr import cli

    assert cli.MIN_INPUT_SIZE == 32  # the rule stage 1 checks too


def test_more_cpu_processes_than_cores_are_refused(dataset_dir, tmp_path, monkeypatch):
    import torch

    from wingclr.train import run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(run, "cpu_cores", lambda: 2)
    _one_line_user_error(lambda: _train(dataset_dir, tmp_path / "runs", "--devices", "4"),
                         "--devices 4", "4 CPU training processes", "2 CPU cores", "--devices 1")
    assert not (tmp_path / "runs").exists()


def test_failed_starts_leave_no_run_folder(dataset_dir, tmp_path):
    out = tmp_path / "runs"
    _one_line_user_error(lambda: _train(dataset_dir, out, "--batch-size", "64"), "--batch-size 64")
    _one_line_user_error(lambda: _train(dataset_dir, out, "--pretrained", "imagenet"), "resnet18")
    assert not out.exists()
    out.mkdir()
    _one_line_user_error(lambda: _train(dataset_dir, out, "--batch-size", "64"), "--batch-size 64")
    assert list(out.iterdir()) == []  # an existing --output keeps no empty run folder or lock


@pytest.mark.parametrize("flag", ["--epochs", "--batch-size"])
def test_zero_epochs_or_batch_is_refused_not_replaced_by_the_default(flag, dataset_dir, tmp_path):
    proc = run_cli("3-training/train.py", "--data", dataset_dir, "--output", tmp_path, *TINY_TRAIN, flag, "0")
    assert_one_line_error(proc, f"{flag}: ", "must be between", "(got 0)")
    assert not any(tmp_path.iterdir())  # nothing trained, no run folder
