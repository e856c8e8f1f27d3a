"""Files from elsewhere are data: checkpoints run no pickled code, annotation and CSV paths stay in
their folders, CSV cells never start a spreadsheet formula, weights are checked, JSON read back
is validated (README "Files you did not write")."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY_TRAIN, assert_one_line_error, run_cli, run_stage
from wingclr.cli import UserError

FIXTURES = Path(__file__).parent / "fixtures"


class Payload:
    """Pickles as a call of ``os.mkdir(marker)``: loading it unsafely makes the marker folder."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def payload_file(path: Path, marker: Path, **extra) -> Path:
    """A checkpoint-looking torch file whose metadata runs ``os.mkdir(marker)`` when unpickled."""
    torch.save({"wingclr": Payload(marker), "state_dict": {}, **extra}, path)
    return path


def assert_refused(excinfo, path: Path, marker: Path) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message and "refused" in message, message
    assert "posix.mkdir" in message, message
    assert not marker.exists(), "the pickled payload ran"


# --- checkpoints: the payload is refused on every route and never runs ---

def test_checkpoint_written_before_safe_loading_still_loads():
    """Fixtures: a stage 3 run's last.ckpt and final checkpoint as the code wrote them before
    checkpoints were read with weights_only=True (shrunk to a few KB, same pickled structure)."""
    from lightning_fabric.utilities.cloud_io import _load as pl_load

    from wingclr.train.checkpoint_files import read_checkpoint

    for name in ("old_last.ckpt", "old_final.ckpt"):
        ckpt = read_checkpoint(FIXTURES / name)
        assert ckpt["wingclr"]["backbone"] == "resnet18" and ckpt["wingclr"]["run_name"] == "r"
        assert ckpt["hyper_parameters"]["temperature"] == 0.5
        assert pl_load(FIXTURES / name, weights_only=True)["epoch"] == ckpt["epoch"]  # Lightning's resume read
    assert "EpochCheckpoint" in read_checkpoint(FIXTURES / "old_last.ckpt")["callbacks"]


def test_pickled_code_in_a_checkpoint_is_refused_by_stage4_in_one_line(tmp_path):
    marker = tmp_path / "ran"
    ckpt = payload_file(tmp_path / "evil.ckpt", marker)
    proc = run_cli("4-embed/embed.py", "--checkpoints", ckpt, "--data", tmp_path / "data",
                   "--output", tmp_path / "out")
    assert_one_line_error(proc, str(ckpt), "refused", "posix.mkdir")
    assert not marker.exists()


def test_pickled_code_in_a_run_folder_is_refused_by_stage4_training_dir(dataset_dir, tmp_path):
    marker = tmp_path / "ran"
    run = tmp_path / "3-training" / "r"
    run.mkdir(parents=True)
    ckpt = payload_file(run / "r.ckpt", marker)
    (run / "manifest.json").write_text(json.dumps({"stage": "3-training", "checkpoint": "r.ckpt",
                                                   "args": {}}))
    with pytest.raises(UserError) as excinfo:
        run_stage("4-embed/embed.py", "--training-dir", run.parent, "--data", dataset_dir,
                  "--output", tmp_path / "out", "--num-workers", "0")
    assert_refused(excinfo, ckpt, marker)


def test_pickled_code_in_a_checkpoint_is_refused_by_stage5_runs(dataset_dir, tmp_path):
    marker = tmp_path / "ran"
    ckpt = payload_file(tmp_path / "evil.ckpt", marker)
    with pytest.raises(UserError) as excinfo:
        run_stage("5-evaluation/evaluate.py", "--runs", ckpt, "--embeddings", tmp_path / "emb",
                  "--data", dataset_dir, "--output", tmp_path / "eval", "--no-umap",
                  "--no-baselines", "--num-workers", "0")
    assert_refused(excinfo, ckpt, marker)


def test_pickled_code_in_last_ckpt_is_refused_when_stage3_resumes(dataset_dir, tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "runs" / "r").mkdir(parents=True)
    ckpt = payload_file(tmp_path / "runs" / "r" / "last.ckpt", marker)
    with pytest.raises(UserError) as excinfo:
        run_stage("3-training/train.py", "--data", dataset_dir, "--output", tmp_path / "runs",
                  "--epochs", "1", "--run-name", "r", *TINY_TRAIN)
    assert_refused(excinfo, ckpt, marker)


def test_lightning_resume_reads_last_ckpt_as_data_even_when_the_environment_allows_pickles(
        dataset_dir, tmp_path, monkeypatch):
    """Lightning's own read of ``ckpt_path`` is weights_only too (here wingclr's check is skipped
    and torch is told to default to full unpickling)."""
    import pickle

    from wingclr.train import run

    marker = tmp_path / "ran"
    (tmp_path / "runs" / "r").mkdir(parents=True)
    payload_file(tmp_path / "runs" / "r" / "last.ckpt", marker)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.setattr(run, "read_checkpoint", lambda path: {})  # as if it were this run's
    monkeypatch.setattr(run, "changed_settings", lambda old, new: [])
    with pytest.raises(pickle.UnpicklingError):
        run_stage("3-training/train.py", "--data", dataset_dir, "--output", tmp_path / "runs",
                  "--epochs", "1", "--run-name", "r", *TINY_TRAIN)
    assert not marker.exists()


def test_pickled_code_in_a_mask_rcnn_checkpoint_is_refused(demo_set, tmp_path):
    marker = tmp_path / "ran"
    ckpt = tmp_path / "maskrcnn_wings.pth"
    torch.save({"model": Payload(marker), "classes": ["wing"]}, ckpt)
    with pytest.raises(UserError) as excinfo:
        run_stage("0-segmentation/segment.py", "--input", demo_set / "specimens", "--output",
                  tmp_path / "out", "--method", "maskrcnn", "--checkpoint", ckpt)
    assert_refused(excinfo, ckpt, marker)


def test_pickled_code_in_mask_rcnn_last_pth_is_refused_on_resume(monkeypatch, tmp_path):
    from wingclr.segment import train_maskrcnn

    marker = tmp_path / "ran"
    torch.save({"settings": Payload(marker)}, tmp_path / train_maskrcnn.LAST)
    with pytest.raises(UserError) as excinfo:
        train_maskrcnn._read_last(tmp_path, None)
    assert_refused(excinfo, tmp_path / train_maskrcnn.LAST, marker)


def test_pickled_code_in_a_weights_file_is_refused(tmp_path, monkeypatch):
    from wingclr.weights import load_state_dict

    marker = tmp_path / "ran"
    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(tmp_path))
    torch.save({"state_dict": Payload(marker)}, tmp_path / "my_weights.pth")
    with pytest.raises(UserError) as excinfo:
        load_state_dict("my_weights.pth")
    assert_refused(excinfo, tmp_path / "my_weights.pth", marker)


# --- paths read from files stay inside their folder ---

def coco_file(path: Path, file_name: str) -> Path:
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": file_name, "height": 8, "width": 8}],
        "categories": [{"id": 1, "name": "wing"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                         "segmentation": [[1, 1, 6, 1, 6, 6]]}]}))
    return path


@pytest.mark.parametrize("file_name, why", [("/etc/passwd", "absolute"),
                                            ("../outside.png", "leads out")])
def test_coco_file_name_outside_images_is_refused_naming_file_and_entry(tmp_path, file_name, why):
    from wingclr.segment.annotations import load_coco

    (tmp_path / "images").mkdir()
    (tmp_path / "outside.png").write_bytes(b"not read")
    coco = coco_file(tmp_path / "wings.json", file_name)
    with pytest.raises(UserError) as excinfo:
        load_coco(coco, tmp_path / "images")
    message = str(excinfo.value)
    assert "\n" not in message and str(coco) in message and "file_name" in message, message
    assert repr(file_name) in message and why in message, message


def test_coco_file_name_inside_images_still_loads(tmp_path):
    from PIL import Image

    from wingclr.segment.annotations import load_coco

    (tmp_path / "images" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a" / "x.png")
    _, items, skipped = load_coco(coco_file(tmp_path / "wings.json", "a/./b/../x.png"), tmp_path / "images")
    assert [i.rel for i in items] == ["a/x.png"] and not skipped


def labelme_file(path: Path, image_path: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"imagePath": image_path, "imageHeight": 8, "imageWidth": 8,
                                "shapes": [{"label": "wing", "shape_type": "polygon",
                                            "points": [[1, 1], [6, 1], [6, 6]]}]}))
    return path


@pytest.mark.parametrize("image_path, why", [("/tmp/elsewhere.png", "absolute"),
                                             ("../../outside.png", "leads out")])
def test_labelme_image_path_outside_images_is_refused_naming_file_and_entry(tmp_path, image_path, why):
    from PIL import Image

    from wingclr.segment.labelme import load_labelme

    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    ann = labelme_file(tmp_path / "photos" / "sub" / "x.json", image_path)
    with pytest.raises(UserError) as excinfo:
        load_labelme(tmp_path / "photos", tmp_path / "photos")
    message = str(excinfo.value)
    assert "\n" not in message and str(ann) in message and "imagePath" in message, message
    assert why in message, message


def test_labelme_image_path_relative_to_a_separate_annotation_folder_still_loads(tmp_path):
    from PIL import Image

    from wingclr.segment.labelme import load_labelme

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "x.png")
    labelme_file(tmp_path / "labels" / "x.json", "../photos/x.png")
    _, items, skipped = load_labelme(tmp_path / "labels", tmp_path / "photos")
    assert [i.rel for i in items] == ["x.png"] and not skipped


def test_clusters_csv_source_image_outside_the_input_is_refused_not_copied_into_split_csv(demo_set, tmp_path):
    clusters = tmp_path / "clusters"
    shutil.copytree(demo_set / "clusters", clusters)
    first = sorted((clusters / "band").iterdir())[0]
    rows = [f"band/{p.name},band,band/{p.stem},band/{p.name}" for p in sorted((clusters / "band").iterdir())]
    rows[0] = f"band/{first.name},band,band/{first.stem},../../../etc/passwd"
    (clusters / "clusters.csv").write_text("image,cluster,specimen,source_image\n" + "\n".join(rows) + "\n")
    with pytest.raises(UserError) as excinfo:
        run_stage("2-create_dataset/create_dataset.py", "--input", clusters, "--output", tmp_path / "out")
    message = str(excinfo.value)
    assert "\n" not in message and "clusters.csv" in message and "../../../etc/passwd" in message, message
    assert "row 2 source_image" in message, message
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_split_csv_image_outside_the_dataset_is_refused_by_stage4(dataset_dir, tmp_path):
    data = tmp_path / "2-dataset"
    shutil.copytree(dataset_dir, data, symlinks=True)
    split = (data / "split.csv").read_text().splitlines()
    split[1] = "../../secret.png" + split[1][split[1].index(","):]
    (data / "split.csv").write_text("\n".join(split) + "\n")
    ckpt = tmp_path / "run.ckpt"
    from conftest import fake_checkpoint
    fake_checkpoint(ckpt)
    with pytest.raises(UserError, match=r"split.csv: row 2 image '../../secret.png' climbs out"):
        run_stage("4-embed/embed.py", "--checkpoints", ckpt, "--data", data, "--output",
                  tmp_path / "out", "--num-workers", "0")


# --- CSV cells never start a spreadsheet formula ---

def test_csv_text_cells_that_start_a_formula_are_quoted_and_numbers_are_not(tmp_path):
    import pandas as pd

    from wingclr.outputs import escape_cell, read_csv, write_csv

    assert escape_cell("\rx") == "'\rx" and escape_cell(-0.5) == -0.5
    texts = ["=HYPERLINK(\"http://x\",\"y\")", "+cmd", "-x", "@SUM(A1)", "\tx", "'=x", "-0.5",
             "plain", "a=b"]
    df = pd.DataFrame({"label": texts, "score": [-0.5] * len(texts), "=head": ["h"] * len(texts)})
    write_csv(tmp_path / "t.csv", df)
    raw = pd.read_csv(tmp_path / "t.csv", dtype=str, keep_default_na=False)
    assert raw.columns.tolist() == ["label", "score", "'=head"]
    assert raw["label"].tolist() == ["'" + t for t in texts[:6]] + ["-0.5", "plain", "a=b"]
    assert (raw["score"] == "-0.5").all()  # a number stays a number
    back = read_csv(tmp_path / "t.csv", dtype={"label": str}, keep_default_na=False)
    assert back["label"].tolist() == texts and back.columns.tolist() == ["label", "score", "=head"]
    assert (back["score"] == -0.5).all()


def test_a_cluster_named_like_a_formula_is_quoted_in_split_csv_and_read_back_by_stage4(demo_set, tmp_path):
    from conftest import fake_checkpoint

    clusters = tmp_path / "clusters"
    shutil.copytree(demo_set / "clusters", clusters)
    (clusters / "band").rename(clusters / "=HYPERLINK(1)")
    run_stage("2-create_dataset/create_dataset.py", "--input", clusters, "--output", tmp_path / "data")
    split = (tmp_path / "data" / "split.csv").read_text()
    assert "'=HYPERLINK(1)/specimen" in split and "\n=" not in split and ",=" not in split
    run_stage("4-embed/embed.py", "--checkpoints", fake_checkpoint(tmp_path / "run.ckpt"), "--data",
              tmp_path / "data", "--output", tmp_path / "emb", "--num-workers", "0")
    emb = (tmp_path / "emb" / "run" / "embeddings.csv").read_text()
    assert emb.count("'=HYPERLINK(1)/") == 6 * 4 and ",=" not in emb  # image, specimen, source_image, group


# --- weights under a published name must be the published file ---

@pytest.fixture
def bad_resnet18(tmp_path, monkeypatch):
    """weights/resnet18-f37072fd.pth holding other weights than the published file."""
    import torchvision

    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(tmp_path / "weights"))
    (tmp_path / "weights").mkdir()
    path = tmp_path / "weights" / "resnet18-f37072fd.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_weights_with_a_wrong_checksum_are_refused_for_training_in_one_line(bad_resnet18, dataset_dir, tmp_path):
    proc = run_cli("3-training/train.py", "--data", dataset_dir, "--output", tmp_path / "runs",
                   "--epochs", "1", *[a for a in TINY_TRAIN if a not in ("--pretrained", "none")],
                   "--pretrained", "imagenet", env={**os.environ, "WINGCLR_WEIGHTS_DIR": str(bad_resnet18.parent)})
    assert_one_line_error(proc, str(bad_resnet18), "fails its checksum", "sha256:f37072fd")
    assert not list((tmp_path / "runs").glob("*/manifest.json"))


def test_weights_check_says_bad_checksum_and_fetch_exits_non_zero(bad_resnet18, capsys):
    from wingclr.weights import __main__ as weights_cli

    assert weights_cli.main(["check", "resnet18"]) == 1
    out = capsys.readouterr().out
    assert "bad checksum" in out and str(bad_resnet18) in out
    assert weights_cli.main(["fetch", "resnet18"]) == 1
    assert "fails its checksum" in capsys.readouterr().out
    assert bad_resnet18.is_file()  # kept: the user decides


def test_weights_checksum_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    import hashlib

    from wingclr.weights import checksums

    path = tmp_path / f"thing-{hashlib.sha256(b'abc').hexdigest()[:8]}.pth"
    path.write_bytes(b"abc")
    checksum = checksums.published_checksum(path.name)
    assert checksums.verify(path, checksum) is True
    hashed, new = [], hashlib.new
    monkeypatch.setattr(checksums.hashlib, "new", lambda kind: hashed.append(kind) or new(kind))
    checksums._MEMORY.clear()  # a new process: the record beside the file answers
    assert checksums.verify(path, checksum) is True and hashed == []
    path.write_bytes(b"abd")  # replaced: hashed again
    assert checksums.verify(path, checksum) is False and hashed == ["sha256"]
    json_record = tmp_path / f".{path.name}.verified.json"
    json_record.write_text('{"checksum": 5, "stamp": "x", "ok": "yes"}')  # malformed: hashed again
    checksums._MEMORY.clear()
    assert checksums.verify(path, checksum) is False and hashed == ["sha256", "sha256"]


def test_a_rembg_model_with_a_wrong_checksum_is_refused(rembg_home, demo_set, tmp_path):
    from wingclr.weights import checksums

    checksums._MEMORY.clear()
    (rembg_home / ".u2net.onnx.verified.json").unlink()  # the stand-in is no longer trusted
    with pytest.raises(UserError, match=r"u2net.onnx fails its checksum \(md5:"):
        run_stage("0-segmentation/segment.py", "--input", demo_set / "specimens", "--output",
                  tmp_path / "out", "--method", "rembg")


# --- training values: finite, sensible ranges, for flags and grid files alike ---

@pytest.mark.parametrize("argv, needle", [
    (("--temperature", "inf"), "temperature must be between 0.01 and 10 (got inf)"),
    (("--temperature", "1e-9"), "temperature must be between 0.01 and 10 (got 1e-09)"),
    (("--temperature", "nan"), "temperature must be between 0.01 and 10 (got nan)"),
    (("--epochs", "1000000000000"), "epochs must be between 1 and 100000"),
    (("--batch-size", "1"), "batch size must be between 2 and 65536"),
])
def test_training_values_out_of_range_are_one_line_errors(argv, needle):
    from wingclr.train.recipes import resolve
    from wingclr.train.settings import TrainSettings

    args = __import__("conftest").load_stage("3-training/train.py").get_args_parser().parse_args(
        ["--data", "d", *argv])
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        resolve(TrainSettings.from_args(args))


@pytest.mark.parametrize("row, needle", [("64,10,1e-320", "temperature must be between"),
                                         ("100000000000000000000,10,0.5", "batch size must be between"),
                                         ("64,10,inf", "temperature must be between")])
def test_grid_file_values_out_of_range_are_refused_naming_the_file(tmp_path, row, needle):
    grid = tmp_path / "grid.csv"
    grid.write_text("batch_size,epochs,temperature\n64,10,0.5\n" + row + "\n")
    with pytest.raises(UserError) as excinfo:
        run_stage("3-training/train.py", "--list-grid", "--grid", grid)
    message = str(excinfo.value)
    assert "\n" not in message and str(grid) in message and "grid point 2" in message, message
    assert needle in message, message


@pytest.mark.parametrize("argv, needle", [(("--batch-sizes", "64,100000000000000000000"), "batch size must be"),
                                          (("--epoch-list", "5,1000000000000"), "epochs must be")])
def test_list_grid_refuses_a_huge_batch_or_epoch_list(argv, needle):
    with pytest.raises(UserError, match=rf"grid point \d+ .*{needle}"):
        run_stage("3-training/train.py", "--list-grid", *argv)


# --- JSON read back: the wrong shape is a note or one line, never a traceback ---

@pytest.mark.parametrize("text", ['{"pid": "abc"}', "[1, 2]", "[]", '{"host": "h", "pid": true}', "5",
                                  '{"host": "h", "pid": 100000000000000000000}'])
def test_a_lock_of_the_wrong_json_shape_is_taken_over_as_stale_with_a_note(tmp_path, capsys, text):
    from wingclr.train.run_folder import RunLock

    run = tmp_path / "runs" / "r"
    run.parent.mkdir()
    (run.parent / ".r.lock").write_text(text)
    with RunLock(run) as lock:
        assert lock.held and json.loads(lock.path.read_text())["pid"] == os.getpid()
    out = capsys.readouterr().out
    assert "note: taking over the lock" in out and "malformed lock" in out


def test_a_lock_whose_live_pid_was_reused_by_another_process_is_stale(tmp_path, capsys):
    import socket

    from wingclr.train.run_folder import RunLock, process_start

    run = tmp_path / "runs" / "r"
    run.parent.mkdir()
    record = {"host": socket.gethostname(), "pid": os.getppid(), "slurm_job": None,
              "started": "2026-01-01T00:00:00+0000", "pid_start": process_start(os.getppid())}
    (run.parent / ".r.lock").write_text(json.dumps(record))
    with pytest.raises(UserError, match=f"being trained by pid {os.getppid()}"):  # alive: it holds it
        RunLock(run).acquire()
    record["pid_start"] = "another-boot:12345"  # the pid now belongs to a process started later
    (run.parent / ".r.lock").write_text(json.dumps(record))
    with RunLock(run) as lock:
        assert lock.held
    assert "the pid was reused" in capsys.readouterr().out


def test_a_lock_records_the_start_time_of_its_process():
    from wingclr.train.run_folder import RunLock, process_start

    owner = RunLock(Path("r"))._owner()
    stat = Path(f"/proc/{os.getpid()}/stat").read_text()
    assert owner["pid_start"] == process_start(os.getpid())
    assert owner["pid_start"].endswith(":" + stat.rsplit(")", 1)[1].split()[19])


@pytest.mark.parametrize("text, needle", [("[]", "a JSON list, not an object"),
                                          ('{"stage": "3-training", "args": [1, 2]}', "'args' is a list"),
                                          ('"finished"', "a JSON str"),
                                          ('{"stage": "3-training", "args": null}', "'args' is a NoneType")])
def test_a_manifest_of_the_wrong_json_shape_is_a_one_line_error_and_nothing_is_deleted(
        dataset_dir, tmp_path, text, needle):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(text)
    (run / "r.ckpt").write_bytes(b"finished work")
    with pytest.raises(UserError) as excinfo:
        run_stage("3-training/train.py", "--data", dataset_dir, "--output", tmp_path / "runs",
                  "--epochs", "1", "--run-name", "r", *TINY_TRAIN)
    message = str(excinfo.value)
    assert "\n" not in message and "manifest.json is not a wingclr manifest" in message and needle in message
    assert (run / "manifest.json").read_text() == text and (run / "r.ckpt").read_bytes() == b"finished work"


def test_a_cache_lock_of_a_live_but_reused_pid_is_removed(tmp_path, capsys):
    from wingclr import cache

    lock = tmp_path / "building.lock"
    lock.write_text(f"{os.uname().nodename} {os.getppid()} another-boot:1\n")  # alive, started later
    cache._wait_or_break(lock, start=0.0)
    assert not lock.exists() and "its pid now belongs to another process" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["[]", '{"channels": "3", "size": 16, "images": [], "unreadable": []}',
                                  '{"channels": 3, "size": 16, "images": [1], "unreadable": []}'])
def test_a_cache_index_of_the_wrong_json_shape_is_a_one_line_error(tmp_path, text):
    from wingclr.cache import CacheDataset

    (tmp_path / "index.json").write_text(text)
    with pytest.raises(UserError, match=r"image cache .*index.json is damaged .*delete the folder"):
        CacheDataset(tmp_path)


def test_a_run_manifest_naming_a_checkpoint_outside_its_folder_is_refused(tmp_path):
    from wingclr.embed.stage import resolve_runs

    run = tmp_path / "3-training" / "r"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"stage": "3-training", "checkpoint": "../../x.ckpt"}))
    with pytest.raises(UserError, match=r"manifest.json: checkpoint '../../x.ckpt' leads out of"):
        resolve_runs([run], run.parent)


def test_segmentation_csv_output_outside_masks_is_refused_by_the_segmentation_evaluation(tmp_path):
    from wingclr.segment.metrics import evaluate_folder

    pred, gt = tmp_path / "pred", tmp_path / "gt"
    (pred / "masks").mkdir(parents=True)
    gt.mkdir()
    (pred / "segmentation.csv").write_text("image,output,status\nx.jpg,../../../etc/passwd,ok\n")
    with pytest.raises(UserError, match=r"segmentation.csv: row 2 output '../../../etc/passwd' climbs out"):
        evaluate_folder(pred, gt)


def _load_weights(path: Path, monkeypatch):
    from wingclr.weights import load_state_dict

    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(path.parent))
    return load_state_dict(path.name)


def _load_maskrcnn(path: Path, monkeypatch):
    from wingclr.segment.maskrcnn import read_checkpoint

    return read_checkpoint(path)


def _load_training_state(path: Path, monkeypatch):
    from wingclr.segment import train_maskrcnn

    return train_maskrcnn._read_last(path.parent, None)


def _load_stage3(path: Path, monkeypatch):
    from wingclr.train.checkpoint_files import read_checkpoint

    return read_checkpoint(path)


@pytest.mark.parametrize("load, name, what, fix", [
    (_load_weights, "my_weights.pth", "weights file", "replace it with a fresh download"),
    (_load_maskrcnn, "maskrcnn_wings.pth", "Mask R-CNN checkpoint", "train_maskrcnn.py"),
    (_load_training_state, "last.pth", "Mask R-CNN training state", "delete it to start the training"),
    (_load_stage3, "run.ckpt", "checkpoint", "re-run the stage 3 command"),
])
@pytest.mark.parametrize("damage", ["junk", "truncated"])
def test_a_damaged_torch_file_is_called_damaged_not_refused_as_code(load, name, what, fix, damage,
                                                                      tmp_path, monkeypatch):
    """Every reader words it once (:func:`wingclr.untrusted.load_torch`): the file, what it
    should be, how to get a good one back."""
    path = tmp_path / name
    if damage == "junk":
        path.write_bytes(b"not a torch file")
    else:
        torch.save({"state_dict": {"w": torch.zeros(64, 64)}}, path)
        path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(UserError) as excinfo:
        load(path, monkeypatch)
    message = str(excinfo.value)
    assert "\n" not in message and "refused" not in message, message
    assert message.startswith(f"{path} is not a readable {what} ("), message
    assert fix in message, message
