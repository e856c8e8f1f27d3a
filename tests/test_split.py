"""Stage 2: per-cluster 80/20 split, reproducibility, outliers, links and bad input."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import assert_one_line_error, run_cli, run_stage
from wingclr.split import assign_splits

SCRIPT = "2-create_dataset/create_dataset.py"


def make_clusters(root: Path, sizes: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, n in sizes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i:03d}.png")
    return root


def read_split(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "split.csv", dtype=str, keep_default_na=False)


def test_split_is_per_cluster_disjoint_and_reproducible(tmp_path):
    src = make_clusters(tmp_path / "in", {"a": 10, "b": 25, "c": 4})
    run_stage(SCRIPT, "--input", src, "--output", tmp_path / "o1", "--seed", "7")
    run_stage(SCRIPT, "--input", src, "--output", tmp_path / "o2", "--seed", "7")
    run_stage(SCRIPT, "--input", src, "--output", tmp_path / "o3", "--seed", "8")
    t1, t2, t3 = (read_split(tmp_path / o) for o in ("o1", "o2", "o3"))
    pd.testing.assert_frame_equal(t1, t2)
    assert not t1.equals(t3)
    counts = t1.groupby("cluster")["split"].value_counts().unstack(fill_value=0)
    assert counts.loc["a"].to_dict() == {"train": 8, "validation": 2}
    assert counts.loc["b"].to_dict() == {"train": 20, "validation": 5}
    assert counts.loc["c"].to_dict() == {"train": 3, "validation": 1}
    out = tmp_path / "o1"
    train = {p.relative_to(out / "train") for p in (out / "train").rglob("*.png")}
    val = {p.relative_to(out / "validation") for p in (out / "validation").rglob("*.png")}
    unlabeled = {p.relative_to(out / "unlabeled") for p in (out / "unlabeled").rglob("*.png")}
    assert not train & val
    assert train | val == unlabeled and len(unlabeled) == 39
    assert {Path(p) for p in t1[t1.split == "validation"].image} == val


def test_adding_a_cluster_does_not_reshuffle_the_others():
    base = ["a"] * 10 + ["b"] * 10
    more = base + ["z"] * 10
    assert assign_splits(base, 0.2, 1) == assign_splits(more, 0.2, 1)[:20]


def test_outliers_unlabeled_only_and_singleton_stays_in_train(tmp_path, capsys):
    src = make_clusters(tmp_path / "in", {"cluster_0": 5, "cluster_1": 1, "outliers": 3})
    out = tmp_path / "out"
    run_stage(SCRIPT, "--input", src, "--output", out)
    t = read_split(out)
    assert set(t[t.cluster == "outliers"].split) == {"unlabeled"}
    assert not (out / "train" / "outliers").exists() and not (out / "validation" / "outliers").exists()
    assert len(list((out / "unlabeled" / "outliers").iterdir())) == 3
    assert t[t.cluster == "cluster_1"].split.tolist() == ["train"]
    assert "cluster cluster_1 has 1 image" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["singleton_clusters"] == ["cluster_1"]


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_link_modes(tmp_path, link):
    src = make_clusters(tmp_path / "in", {"a": 5})
    out = tmp_path / "out"
    run_stage(SCRIPT, "--input", src, "--output", out, "--link", link)
    f = next((out / "train" / "a").iterdir())
    if link == "symlink":
        assert f.is_symlink() and f.resolve() == (src / "a" / f.name).resolve()
    else:
        assert not f.is_symlink() and os.stat(f).st_ino == os.stat(src / "a" / f.name).st_ino


def test_bad_files_are_skipped_and_reported(tmp_path):
    src = make_clusters(tmp_path / "in", {"a": 4})
    (src / "a" / "notes.txt").write_text("field notes")
    Image.fromarray(np.zeros((300, 300, 3), np.uint8) + 90).save(src / "a" / "full.jpg")
    data = (src / "a" / "full.jpg").read_bytes()
    (src / "a" / "broken.jpg").write_bytes(data[: len(data) // 2])
    proc = run_cli(SCRIPT, "--input", src, "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "skipped: a/broken.jpg" in proc.stdout and "skipped: a/notes.txt" in proc.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert {p for p, _ in manifest["skipped_files"]} == {"a/broken.jpg", "a/notes.txt"}
    assert len(read_split(tmp_path / "out")) == 5  # 4 PNGs + full.jpg


def test_empty_input_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli(SCRIPT, "--input", tmp_path / "empty", "--output", tmp_path / "o"),
                          "no images", str(tmp_path / "empty"))
    assert_one_line_error(run_cli(SCRIPT, "--input", tmp_path / "nope", "--output", tmp_path / "o"),
                          "does not exist")


def test_finished_output_is_skipped_or_refused_never_replaced(tmp_path):
    src = make_clusters(tmp_path / "in", {"a": 5, "b": 5})
    out = tmp_path / "out"
    run_stage(SCRIPT, "--input", src, "--output", out, "--seed", "1")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    same = run_cli(SCRIPT, "--input", src, "--output", out, "--seed", "1")
    assert same.returncode == 0 and "skip:" in same.stdout
    other = run_cli(SCRIPT, "--input", src, "--output", out, "--seed", "2")
    assert_one_line_error(other, "--overwrite", str(out))
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert before == after
    run_stage(SCRIPT, "--input", src, "--output", out, "--seed", "2", "--overwrite")
    assert json.loads((out / "manifest.json").read_text())["seed"] == 2
