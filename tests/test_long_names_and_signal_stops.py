"""Long file names, stops by signal and resume, and warnings that must not reach the terminal."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import REPO, assert_one_line_error, fake_meta, run_cli, run_stage

SEGMENT = "0-segmentation/segment.py"
LONG = "w" * 245  # + ".jpg": a legal 249-byte name


def _specimen(path: Path, size: int = 48, seed: int = 0) -> Path:
    """A dark ellipse on a plain light background (what ``--method threshold`` cuts out)."""
    yy, xx = np.mgrid[:size, :size]
    inside = ((yy - size / 2) / (size * 0.3)) ** 2 + ((xx - size / 2) / (size * 0.4)) ** 2 < 1
    arr = np.full((size, size, 3), 235, np.uint8)
    arr[inside] = np.random.default_rng(seed).integers(20, 120, (int(inside.sum()), 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


# long but legal names

def test_atomic_writes_work_for_the_longest_legal_name(tmp_path):
    from wingclr.outputs import write_text

    name = "n" * 251 + ".png"  # 255 bytes: any prefix on the temporary file would not fit
    write_text(tmp_path / name, "x")
    assert os.listdir(tmp_path) == [name]


def test_a_file_name_too_long_for_the_file_system_is_shortened_with_a_hash(tmp_path):
    from wingclr.outputs import fit_name

    short = "sheet_a.png"
    assert fit_name(short) == short
    one, two = fit_name("sheet_" + "é" * 300 + "a.png"), fit_name("sheet_" + "é" * 300 + "b.png")
    assert one != two and one.endswith(".png") and one.startswith("sheet_éé")
    assert max(len(one.encode()), len(two.encode())) <= 255
    one.encode().decode("utf-8")  # never cut inside a character


def test_stage0_segments_a_photo_with_a_245_character_name(tmp_path):
    photos = tmp_path / "photos"
    _specimen(photos / f"{LONG}.jpg")
    _specimen(photos / "short.jpg", seed=1)
    out = tmp_path / "out"
    manifest = run_stage(SEGMENT, "--input", photos, "--output", out, "--method", "threshold",
                         "--no-progress")
    table = pd.read_csv(out / "segmentation.csv")
    assert (table.status == "ok").all() and manifest["counts"]["ok"] == 2
    assert (out / "images" / f"{LONG}.png").is_file() and (out / "masks" / f"{LONG}.png").is_file()


def test_contact_sheet_of_a_300_character_label_is_written(tmp_path):
    from wingclr.contact_sheets import write_contact_sheets

    images = [_specimen(tmp_path / "img" / f"{i}.png", 32, i) for i in range(4)]
    label = "L" * 300
    written = write_contact_sheets(np.random.default_rng(0).normal(size=(4, 5)),
                                   [label, label, "b", "b"], images, tmp_path / "sheets")
    names = sorted(p.name for p in written)
    assert len(names) == 2 and all(p.is_file() for p in written)
    long = [n for n in names if n.startswith("sheet_LLL")]
    assert len(long) == 1 and len(long[0].encode()) <= 255


def test_gradcam_figures_of_images_with_long_names_are_written(tmp_path):
    import torch

    from wingclr.evaluate.gradcam import write_gradcam
    from wingclr.models import build_backbone

    images = [_specimen(tmp_path / "img" / f"{'g' * 250}{i}.png", 40, i) for i in range(6)]
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet18", False)
    features = np.random.default_rng(0).normal(size=(6, dim)).astype(np.float32)
    labels = ["a", "b"] * 3
    train = np.array([True] * 4 + [False] * 2)
    written = write_gradcam(backbone, fake_meta(), features, labels, images, train, ~train, 1.0,
                            tmp_path / "gradcam", n=2)
    assert len(written) == 2 and all(p.is_file() and len(p.name.encode()) <= 255 for p in written)


# bad flags

def test_unknown_timm_pretrained_tag_is_one_line_listing_the_known_tags(capsys):
    from conftest import load_stage

    for script in ("3-training/train.py", "1-clustering/cluster.py"):
        parser = load_stage(script).get_args_parser()
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(["--backbone", "timm/resnet18.nosuch"])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "Invalid pretrained tag" not in err
        line = [s for s in err.splitlines() if "error:" in s]
        assert len(line) == 1 and "'nosuch'" in line[0] and "a1_in1k" in line[0] and "tv_in1k" in line[0]
    assert load_stage("3-training/train.py").get_args_parser().parse_args(
        ["--backbone", "timm/resnet18.a1_in1k"]).backbone == "timm/resnet18.a1_in1k"


def test_an_output_that_is_an_existing_file_is_one_line_in_every_stage(tmp_path):
    photos = tmp_path / "photos"
    for i in range(6):
        _specimen(photos / f"{i}.png", 40, i)
    taken = tmp_path / "taken.txt"
    taken.write_text("not a folder")
    commands = {SEGMENT: ("--input", photos, "--method", "threshold", "--output", taken),
                "1-clustering/cluster.py": ("--input", photos, "--output", taken, "--yes"),
                "0-segmentation/train_maskrcnn.py": ("--images", photos, "--annotations", taken,
                                                     "--work-dir", taken)}
    for script, args in commands.items():
        proc = run_cli(script, *args, timeout=300)
        assert_one_line_error(proc, str(taken), "is a file, not a folder")
    assert taken.read_text() == "not a folder"


# warnings that must not reach the terminal

def test_a_garbage_tiff_is_listed_unreadable_without_decoder_warnings(tmp_path):
    photos = tmp_path / "photos"
    _specimen(photos / "good.png")
    (photos / "bad.tif").write_bytes(b"II*\x00\x08\x00\x00\x00")  # a TIFF header, then nothing
    proc = run_cli(SEGMENT, "--input", photos, "--output", tmp_path / "out", "--method", "threshold",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "unreadable: bad.tif" in proc.stdout
    for noise in ("Corrupt EXIF", "UserWarning", "invalid offset", "tifffile"):
        assert noise not in proc.stderr, proc.stderr


def test_unicode_labels_draw_without_glyph_warnings(tmp_path):
    code = ("import numpy as np; from wingclr.evaluate.figures import plot_confusion; from wingclr.plotting import plot_pca; "
            "y = ['蝶', 'クラス', 'Ω'] * 4; "
            f"plot_confusion(y, y[::-1], sorted(set(y)), {str(tmp_path / 'c.png')!r}, 'ラン', 'labels'); "
            f"plot_pca(np.random.default_rng(0).normal(size=(12, 2)), y, np.array([0.5, 0.2]), "
            f"{str(tmp_path / 'p.png')!r}, '蝶')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "c.png").is_file() and (tmp_path / "p.png").is_file()
    assert "Glyph" not in proc.stderr and "missing from font" not in proc.stderr, proc.stderr


# stops by signal

def _cli_run(script: str, *argv) -> int:
    """Run a stage as its ``__main__`` does (``cli.run``: signals, one-line messages); the exit status."""
    from conftest import load_stage
    from wingclr import cli

    module = load_stage(script)
    with pytest.raises(SystemExit) as done:
        cli.run(module.main, module.get_args_parser(), [str(a) for a in argv])
        raise SystemExit(0)
    return done.value.code


def _sigterm_on_call(monkeypatch, owner, name: str, call: int) -> None:
    """SIGTERM arrives (a real signal, to this process) during the ``call``-th call of ``owner.name``."""
    real, calls = getattr(owner, name), []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)


def _stop_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("stopped by SIGTERM: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].endswith("re-run the same command to resume")
    return lines[0]


def test_sigterm_during_stage0_says_what_was_saved_and_the_resume_clears_temp_files(
        demo_set, tmp_path, monkeypatch, capsys):
    from wingclr.segment import methods

    out = tmp_path / "seg"
    args = ("--input", demo_set / "specimens", "--output", out, "--method", "threshold",
            "--no-progress", "--flush-every", "1")
    with monkeypatch.context() as m:
        _sigterm_on_call(m, methods.Segmenter, "__call__", 4)
        assert _cli_run(SEGMENT, *args) == 128 + signal.SIGTERM
    line = _stop_line(capsys.readouterr().err)
    assert f"{out / 'segmentation.csv'} lists the 3 of 30 photos done" in line
    assert len(pd.read_csv(out / "segmentation.csv")) == 3
    stale = out / "images" / ".tmp-k1ll9abc.png"  # what a kill -9 mid-write leaves
    stale.write_bytes(b"half a png")
    assert _cli_run(SEGMENT, *args) == 0
    assert not stale.exists() and not list(out.rglob(".tmp-*"))
    assert json.loads((out / "manifest.json").read_text())["counts"]["ok"] == 30


def test_sigterm_during_stage2_says_the_dataset_is_unfinished(demo_set, tmp_path, monkeypatch, capsys):
    import wingclr.dataset

    out = tmp_path / "2-dataset"
    args = ("--input", demo_set / "clusters", "--output", out)
    with monkeypatch.context() as m:
        _sigterm_on_call(m, wingclr.dataset, "place_file", 5)
        assert _cli_run("2-create_dataset/create_dataset.py", *args) == 128 + signal.SIGTERM
    assert f"{out} is unfinished (no manifest.json" in _stop_line(capsys.readouterr().err)
    assert not (out / "manifest.json").exists()
    assert _cli_run("2-create_dataset/create_dataset.py", *args) == 0
    assert len(pd.read_csv(out / "split.csv")) == 30


def test_sigterm_during_stage4_says_which_runs_are_embedded(dataset_dir, tmp_path, monkeypatch, capsys):
    import wingclr.embed.stage
    from conftest import fake_checkpoint

    runs = tmp_path / "3-training"
    ckpts = []
    for i, name in enumerate(("r1", "r2")):
        (runs / name).mkdir(parents=True)
        ckpts.append(fake_checkpoint(runs / name / f"{name}.ckpt", seed=i))
    out = tmp_path / "4-embeddings"
    args = ("--checkpoints", *ckpts, "--data", dataset_dir, "--output", out, "--num-workers", "0",
            "--quiet")
    with monkeypatch.context() as m:
        _sigterm_on_call(m, wingclr.embed.stage, "embed_run", 2)
        assert _cli_run("4-embed/embed.py", *args) == 128 + signal.SIGTERM
    assert f"1 of 2 runs embedded in {out}" in _stop_line(capsys.readouterr().err)
    assert (out / "r1" / "manifest.json").is_file() and not (out / "r2" / "manifest.json").exists()
    assert _cli_run("4-embed/embed.py", *args) == 0
    assert (out / "r2" / "manifest.json").is_file()


TRAIN = "3-training/train.py"


def _losses_and_weights(run: Path):
    import torch

    losses = pd.read_csv(run / "metrics.csv").train_loss.dropna().tolist()  # the monitor's epoch 0 has none
    state = torch.load(run / f"{run.name}.ckpt", map_location="cpu", weights_only=False)
    return losses, state["global_step"], state["state_dict"]


def _same_run(a: Path, b: Path) -> None:
    import torch

    (loss_a, steps_a, w_a), (loss_b, steps_b, w_b) = _losses_and_weights(a), _losses_and_weights(b)
    assert loss_a == loss_b and steps_a == steps_b
    assert w_a.keys() == w_b.keys() and all(torch.equal(w_a[k], w_b[k]) for k in w_a)


@pytest.fixture(scope="module")
def uninterrupted(dataset_dir, tmp_path_factory):
    """A 2-epoch tiny run trained without a stop: ``(runs folder, common flags)``."""
    from conftest import TINY_TRAIN

    runs = tmp_path_factory.mktemp("runs")
    flags = ("--data", dataset_dir, "--output", runs, "--epochs", "2", "--quiet", *TINY_TRAIN)
    run_stage(TRAIN, *flags, "--run-name", "whole")
    return runs, flags


def test_ctrl_c_during_training_saves_and_the_resumed_run_equals_an_uninterrupted_one(
        uninterrupted, monkeypatch, capfd):
    import warnings

    from wingclr.train.saving import EpochCheckpoint

    runs, flags = uninterrupted
    start = EpochCheckpoint.on_train_batch_start

    def ctrl_c(self, trainer, module, batch, batch_idx):  # while the 2nd of 3 batches of epoch 2 trains
        start(self, trainer, module, batch, batch_idx)
        if trainer.global_step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    workers = ("--num-workers", "2")  # none in the uninterrupted run: the worker count changes nothing
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs as a background job

    with monkeypatch.context() as m:
        m.setattr(EpochCheckpoint, "on_train_batch_start", ctrl_c)
        for name in [k for k in os.environ if k.startswith("SLURM")]:
            m.delenv(name)
        assert _cli_run(TRAIN, *flags, "--run-name", "stopped", *workers) == 128 + signal.SIGINT
    err = capfd.readouterr().err
    assert "Ctrl-C: saving last.ckpt after the current batch" in err and "Traceback" not in err
    assert f"stopped: SIGINT: saved {runs / 'stopped' / 'last.ckpt'} after 5 steps; re-run the same " \
           "command to resume" in err
    assert signal.getsignal(signal.SIGINT) is before  # restored after the stop
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_stage(TRAIN, *flags, "--run-name", "stopped", *workers)
    assert not [w for w in caught if "before the epoch ended" in str(w.message)]
    assert "unreliable results" not in capfd.readouterr().err
    _same_run(runs / "whole", runs / "stopped")  # exact: losses, steps and every weight


def test_a_run_killed_with_sigkill_resumes_from_its_last_epoch_to_the_same_numbers(uninterrupted):
    runs, flags = uninterrupted
    # 2 DataLoader workers (the uninterrupted run had none): augmentations come from per-batch
    # seeds, so the worker count changes nothing, as RUN_ONLY promises
    argv = [sys.executable, str(REPO / TRAIN), *map(str, flags), "--run-name", "killed",
            "--num-workers", "2"]
    last = runs / "killed" / "last.ckpt"
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    try:
        while not last.exists() and proc.poll() is None:  # epoch 1 saved (or the run ended)
            time.sleep(0.02)
    finally:
        proc.kill()  # SIGKILL: nothing is saved; the batches of epoch 2 trained so far are lost
        proc.wait()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _same_run(runs / "whole", runs / "killed")
