"""Stage 2: per-cluster 80/20 split, reproducibility, outliers, links and bad input."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import assert_one_line_error, load_stage, run_cli, run_stage
from wingclr.dataset import assign_splits

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


# specimen groups: the photos of one specimen stay on one side

VIEWS = r"^(.*?)[DV]$"  # ACC0001D, ACC0001V -> ACC0001


def make_views(root: Path, n: int, clusters=("a", "b")) -> Path:
    """``n`` specimens photographed dorsal and ventral (``<id>D.png``, ``<id>V.png``); every third
    specimen's views fall into two different clusters."""
    rng = np.random.default_rng(1)
    for i in range(n):
        for view in "DV":
            cluster = clusters[(i + (view == "V" and i % 3 == 0)) % len(clusters)]
            (root / cluster).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                root / cluster / f"ACC{i:04d}{view}.png")
    return root


def split_groups(table: pd.DataFrame) -> int:
    """How many groups have photos in both train and validation."""
    sides = table[table.split.isin(["train", "validation"])].groupby("group").split.nunique()
    return int((sides > 1).sum())


def test_group_by_keeps_both_views_of_a_specimen_on_one_side(tmp_path, capsys):
    src = make_views(tmp_path / "in", 40)
    run_stage(SCRIPT, "--input", src, "--output", tmp_path / "plain", "--seed", "2", "--quiet")
    plain = read_split(tmp_path / "plain")
    assert (plain.group == plain.specimen).all()  # one photo, one group
    plain["group"] = plain.specimen.str.split("/").str[-1].str[:-1]
    assert split_groups(plain) > 5  # without grouping, views land on both sides
    capsys.readouterr()
    run_stage(SCRIPT, "--input", src, "--output", tmp_path / "grouped", "--seed", "2", "--quiet",
              "--group-by", VIEWS)
    assert "groups: 80 photos in 40 groups; largest group 2 photos (ACC0000)" in capsys.readouterr().out
    grouped = read_split(tmp_path / "grouped")
    assert list(grouped.columns[-3:]) == ["specimen", "source_image", "group"]
    assert (grouped.group == grouped.specimen.str.split("/").str[-1].str[:-1]).all()
    assert split_groups(grouped) == 0  # also the specimens whose views are in two clusters
    val = (grouped.split == "validation").groupby(grouped.cluster).mean()
    assert ((val > 0.1) & (val < 0.3)).all()  # still about --val-fraction 0.2 per cluster
    manifest = json.loads((tmp_path / "grouped" / "manifest.json").read_text())
    assert manifest["args"]["group_by"] == VIEWS and manifest["counts"]["groups"] == 40
    assert manifest["grouping"] | {"groups": 40} == {
        "by": "group-by", "group_by": VIEWS, "photos": 80, "groups": 40, "largest": 2,
        "largest_group": "ACC0000", "own_group": 0, "split_across": 0}


def test_without_grouping_the_split_is_the_one_drawn_before_groups(tmp_path):
    from wingclr.dataset import update_splits

    clusters = ["a"] * 7 + ["b"] * 12 + ["outliers"] * 2 + ["c"] + ["d"] * 2
    splits = assign_splits(clusters, 0.25, 3)
    assert "".join(s[0] for s in splits) == "tvtvttttvtttvtttvttuuttv"  # the draw of 0d0a0b5
    assert assign_splits(clusters, 0.25, 3, groups=[str(i) for i in range(24)]) == splits
    images = [f"{c}/{i}" for i, c in enumerate(clusters)]
    old = {images[i]: splits[i] for i in range(len(images)) if i % 3}
    assert "".join(s[0] for s in update_splits(images, clusters, old, 0.25, 3)) == \
        "vvttttttvtttvtttvttuuttv"
    # grouped: whole groups drawn; a group seen in an earlier cluster keeps its side
    groups = [f"g{i // 2}" for i in range(24)]
    grouped = assign_splits(clusters, 0.25, 3, groups=groups)
    sides = {}
    for g, s in zip(groups, grouped):
        if s != "unlabeled":
            sides.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in sides.values())
    new = update_splits(images, clusters, {images[i]: grouped[i] for i in range(24) if i % 2},
                        0.25, 3, groups=groups)
    assert all(new[i] == grouped[i] for i in range(24) if clusters[i] != "outliers")


def test_update_places_a_new_photo_of_a_group_on_its_side(tmp_path, capsys):
    src = make_views(tmp_path / "in", 30)
    ventral = sorted(src.rglob("*V.png"))
    for path in ventral[:10]:
        path.rename(tmp_path / path.name)  # photographed later
    out = tmp_path / "out"
    args = ("--input", src, "--output", out, "--seed", "5", "--quiet", "--group-by", VIEWS)
    run_stage(SCRIPT, *args)
    first = read_split(out).set_index("image")
    for path in ventral[:10]:
        (tmp_path / path.name).rename(path)
    run_stage(SCRIPT, *args, "--update")
    after = read_split(out).set_index("image")
    assert "update: 10 new images placed" in capsys.readouterr().out
    assert (after.loc[first.index, "split"] == first.split).all()
    assert split_groups(after) == 0 and len(after) == 60


def test_groups_from_a_csv_matched_by_file_name(tmp_path, capsys):
    src = make_views(tmp_path / "in", 20)
    labels = pd.DataFrame({"filename": [f"images/x/ACC{i:04d}{v}.png" for i in range(19) for v in "DV"],
                           "id": [f"EL{i}" for i in range(19) for _ in "DV"]})
    labels.loc[len(labels)] = ["images/x/ACC9999D.png", "EL9999"]  # a photo not in this dataset
    labels.to_csv(tmp_path / "labels.csv", index=False)
    run_stage(SCRIPT, "--input", src, "--output", tmp_path / "out", "--quiet",
              "--groups", tmp_path / "labels.csv", "--group-column", "id", "--group-id-column", "filename")
    out = capsys.readouterr().out
    assert "note: 1 row of" in out and "names no photo" in out
    assert "groups: 40 photos in 21 groups; largest group 2 photos (EL0)" in out
    assert "2 photos have no group in" in out and "ACC0019D" in out  # alone: their own group
    table = read_split(tmp_path / "out")
    assert split_groups(table) == 0
    by_name = table.set_index(table.specimen.str.split("/").str[-1])
    assert by_name.loc["ACC0003V", "group"] == "EL3"
    assert by_name.loc["ACC0019V", "group"] == by_name.loc["ACC0019V", "specimen"]  # alone
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["grouping"]["group_column"] == "id" and manifest["grouping"]["own_group"] == 2


def test_bad_grouping_is_a_one_line_error(tmp_path):
    src = make_views(tmp_path / "in", 4)
    base = ("--input", src, "--output", tmp_path / "o")
    assert_one_line_error(run_cli(SCRIPT, *base, "--group-by", "(["), "not a regular expression")
    assert_one_line_error(run_cli(SCRIPT, *base, "--group-by", "^XYZ"), "matches none of the 8 file names")
    pd.DataFrame({"image": ["a/ACC0000D.png", "a/ACC0000D.png"], "id": ["1", "2"]}).to_csv(
        tmp_path / "g.csv", index=False)
    assert_one_line_error(run_cli(SCRIPT, *base, "--groups", tmp_path / "g.csv"), "--group-column")
    assert_one_line_error(run_cli(SCRIPT, *base, "--group-column", "id"), "pass --groups")
    assert_one_line_error(run_cli(SCRIPT, *base, "--groups", tmp_path / "g.csv", "--group-by", "x"),
                          "exclude each other")
    assert_one_line_error(run_cli(SCRIPT, *base, "--groups", tmp_path / "g.csv", "--group-column", "idx"),
                          "g.csv needs the columns idx")
    assert_one_line_error(run_cli(SCRIPT, *base, "--groups", tmp_path / "g.csv", "--group-column", "id"),
                          "two groups", "a/ACC0000D.png")
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_a_bad_grouping_stops_before_any_image_is_decoded(tmp_path, monkeypatch):
    from wingclr.cli import UserError

    src = make_views(tmp_path / "in", 4)
    monkeypatch.setattr("wingclr.dataset.check_readable", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(UserError, match="matches none"):
        run_stage(SCRIPT, "--input", src, "--output", tmp_path / "o", "--group-by", "^XYZ")


def test_a_copied_dataset_folder_is_the_same_finished_dataset(tmp_path):
    src = make_views(tmp_path / "in", 6)
    pd.DataFrame({"specimen": [f"ACC{i:04d}{v}" for i in range(6) for v in "DV"],
                  "id": [str(i) for i in range(6) for _ in "DV"]}).to_csv(tmp_path / "g.csv", index=False)
    args = ("--groups", tmp_path / "g.csv", "--group-column", "id")
    run_stage(SCRIPT, "--input", src, "--output", tmp_path / "work" / "2", *args)
    shutil.copytree(tmp_path / "work", tmp_path / "moved" / "work")
    shutil.copy2(tmp_path / "g.csv", tmp_path / "moved" / "g.csv")
    moved = ("--input", src, "--output", tmp_path / "moved" / "work" / "2")
    same = run_cli(SCRIPT, *moved, "--groups", tmp_path / "moved" / "g.csv", "--group-column", "id")
    assert same.returncode == 0 and "skip:" in same.stdout, same.stderr
    (tmp_path / "moved" / "g.csv").write_text("specimen,id\nACC0000D,9\n")
    assert_one_line_error(run_cli(SCRIPT, *moved, "--groups", tmp_path / "moved" / "g.csv",
                                  "--group-column", "id"), "groups_sha256 differ")
    assert_one_line_error(run_cli(SCRIPT, *moved, *args, "--seed", "4"), "seed differ")


@pytest.mark.parametrize("edit,needle", [
    ("image", "row 4 lists image ACC0000D.png again (first at row 2)"),
    ("specimen", "row 3 (ACC0000V.png) gives specimen ACC0000D to a second image (first at row 2)"),
])
def test_a_hand_edited_clusters_csv_claiming_one_photo_twice_is_refused(tmp_path, edit, needle):
    src = make_views(tmp_path / "in", 3, clusters=("cluster_0",))
    names = sorted(p.name for p in (src / "cluster_0").iterdir())
    table = pd.DataFrame({"image": names, "cluster": "cluster_0", "specimen": [n[:-4] for n in names],
                          "source_image": [n[:-4] + ".jpg" for n in names]})
    if edit == "image":
        table.loc[2] = table.loc[0]
    else:
        table.loc[1, "specimen"] = table.loc[0, "specimen"]
    table.to_csv(src / "clusters.csv", index=False)
    proc = run_cli(SCRIPT, "--input", src, "--output", tmp_path / "o")
    assert_one_line_error(proc, f"{src / 'clusters.csv'} {needle}", "delete or correct one")
    assert not (tmp_path / "o" / "split.csv").exists()


def test_real_specimens_keep_both_views_together_only_when_grouped(tmp_path):
    bench = load_stage("benchmarks/specimen_groups.py")
    data = bench.shared_data() / "papilionidae"
    if not (data / "labels.csv").is_file():
        pytest.skip(f"shared specimen photos not on this machine ({data})")
    found = bench.split_specimens(data, tmp_path, specimens=60)
    assert found["specimens"] == 60 and found["photos"] == 120
    assert found["none"] > 5 and found["group-by"] == 0 and found["groups"] == 0
