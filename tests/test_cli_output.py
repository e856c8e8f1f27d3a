"""What users read: every stage's --help, the one --quiet flag, third-party noise, CSV numbers."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_TRAIN, load_stage, run_cli, run_stage

STAGES = ("0-segmentation/segment.py", "0-segmentation/train_maskrcnn.py",
          "0-segmentation/evaluate_segmentation.py", "1-clustering/cluster.py",
          "2-create_dataset/create_dataset.py", "3-training/train.py", "4-embed/embed.py",
          "5-evaluation/evaluate.py")
# Third-party chatter that normal output must not carry.
NOISE = ("Tip", "litlogger", "LitServe", "litmodels", "FutureWarning", "DeprecationWarning",
         "is deprecated", "GPU available", "TPU available")


COMMANDS = (*STAGES, "wingclr.demo", "wingclr.weights", "wingclr.weights fetch", "wingclr.weights check")


def _parser(name: str) -> argparse.ArgumentParser:
    """The parser of a stage script, a wingclr command-line module or one of its sub-commands."""
    if name.endswith(".py"):
        return load_stage(name).get_args_parser()
    from wingclr import demo
    from wingclr.weights import __main__ as weights_cli

    module, *sub = name.split()
    p = {"wingclr.demo": demo, "wingclr.weights": weights_cli}[module].get_args_parser()
    for action in p._actions:
        if sub and isinstance(action, argparse._SubParsersAction):
            p = action.choices[sub[0]]
    return p


def _option_helps(p: argparse.ArgumentParser):
    formatter = p._get_formatter()
    for action in p._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, (argparse._HelpAction,
                                                                   argparse._SubParsersAction)):
            continue
        yield action, formatter._expand_help(action) if action.help else ""


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_every_default_once_and_never_none_or_switch_state(name):
    parser = _parser(name)
    for action, text in _option_helps(parser):
        flag = "/".join(action.option_strings) or action.dest
        assert text.strip(), f"{name} {flag} has no help"
        assert len(re.findall(r"\(default", text)) <= 1, f"{name} {flag}: {text}"
        assert "(default: None)" not in text, f"{name} {flag}: {text}"
        if action.nargs == 0:
            assert not re.search(r"\(default: (True|False)\)", text), f"{name} {flag}: {text}"
    parser.format_help()  # renders (no stray % in a help text)


def test_help_formatter_rules():
    from wingclr import cli

    p = cli.parser("doc")
    p.add_argument("--size", type=int, default=64, help="side (px)")
    p.add_argument("--own", type=int, default=5, help="neighbours (default 5 per class)")
    p.add_argument("--later", default=None, help="decided at run time")
    p.add_argument("--colour", default=(1, 2, 3), help="R,G,B")
    p.add_argument("--ratio", default="50%", help="share")
    helps = {a.dest: t for a, t in _option_helps(p)}
    assert helps["size"] == "side (px) (default: 64)"
    assert helps["own"] == "neighbours (default 5 per class)"
    assert helps["later"] == "decided at run time"
    assert helps["colour"] == "R,G,B (default: 1,2,3)"
    assert helps["ratio"] == "share (default: 50%)"


@pytest.mark.parametrize("script", [s for s in STAGES if "evaluate_segmentation" not in s])
def test_every_stage_takes_quiet(script):
    parser = load_stage(script).get_args_parser()
    required = {"0-segmentation/train_maskrcnn.py": ["--images", "x", "--masks", "y"],
                "0-segmentation/evaluate_segmentation.py": ["--gt", "x"]}.get(script, [])
    args = vars(parser.parse_args([*required, "--quiet"]))
    assert args.get("quiet") is True or args.get("progress") is False
    assert "--quiet" in parser.format_help()


@pytest.mark.parametrize("stage,script", [
    ("0-segmentation", "0-segmentation/segment.py"), ("0-train-maskrcnn", "0-segmentation/train_maskrcnn.py"),
    ("1-clustering", "1-clustering/cluster.py"), ("2-create_dataset", "2-create_dataset/create_dataset.py"),
    ("3-training", "3-training/train.py"), ("4-embed", "4-embed/embed.py"),
    ("5-evaluation", "5-evaluation/evaluate.py")])
def test_each_stage_lists_its_run_only_flags_in_one_place(stage, script):
    from wingclr.outputs import RUN_ONLY

    dests = {a.dest for a in load_stage(script).get_args_parser()._actions}
    assert RUN_ONLY[stage] <= dests, RUN_ONLY[stage] - dests  # no stale or misspelt name
    assert {"overwrite"} <= RUN_ONLY[stage] and not {"output", "seed"} & RUN_ONLY[stage]


def test_run_only_flags_are_ignored_on_both_sides_of_the_settings_check(tmp_path):
    import wingclr.cluster.settings  # noqa: F401  (its declaration fills RUN_ONLY["1-clustering"])
    from wingclr.cli import UserError
    from wingclr.outputs import check_finished, read_manifest, write_manifest

    args = dict(input="photos", min_cluster_size=10, batch_size=64, device="cpu", overwrite=False)
    write_manifest(tmp_path, "1-clustering", args, counts={})
    assert read_manifest(tmp_path)["args"] == {"input": "photos", "min_cluster_size": 10}
    assert check_finished(tmp_path, {**args, "batch_size": 8, "device": "cuda"},
                          False, "clustering")
    old = read_manifest(tmp_path)  # a manifest that recorded a run-only flag still matches
    old["args"]["batch_size"] = 64
    (tmp_path / "manifest.json").write_text(__import__("json").dumps(old))
    assert check_finished(tmp_path, args, False, "clustering")
    with pytest.raises(UserError, match="min_cluster_size"):
        check_finished(tmp_path, {**args, "min_cluster_size": 5}, False, "clustering")


def test_segment_keeps_no_progress_as_a_hidden_alias():
    parser = load_stage("0-segmentation/segment.py").get_args_parser()
    assert parser.parse_args(["--no-progress"]).progress is False
    assert parser.parse_args([]).progress is True
    assert "--no-progress" not in parser.format_help()


def test_progress_lines_without_a_terminal_and_none_when_quiet(capsys):
    from wingclr.cli import progress

    assert list(progress(range(30), 30, "copy")) == list(range(30))
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "copy: 30/30" and 2 <= len(lines) <= 4
    assert list(progress(range(30), 30, "copy", quiet=True)) == list(range(30))
    assert capsys.readouterr().out == ""


def test_stage2_shows_progress_and_quiet_silences_it(demo_set, tmp_path, capsys):
    run_stage("2-create_dataset/create_dataset.py", "--input", demo_set / "clusters",
              "--output", tmp_path / "a", "--link", "symlink")
    out = capsys.readouterr().out
    assert re.search(r"^symlink: 30/30 images$", out, re.M), out
    run_stage("2-create_dataset/create_dataset.py", "--input", demo_set / "clusters",
              "--output", tmp_path / "b", "--link", "symlink", "--quiet")
    out = capsys.readouterr().out
    assert "30/30" not in out and "wrote" in out


def test_stage3_quiet_turns_off_the_progress_bar(dataset_dir, tmp_path, monkeypatch):
    import pytorch_lightning as pl

    seen = {}

    class Stop(Exception):
        pass

    def trainer(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(pl, "Trainer", trainer)
    monkeypatch.setattr("wingclr.train.run.stdout_is_terminal", lambda: True, raising=False)
    for flags, bar in (((), True), (("--quiet",), False)):
        with pytest.raises(Stop):
            run_stage("3-training/train.py", "--data", dataset_dir, "--output", tmp_path,
                      "--epochs", "1", *TINY_TRAIN, *flags)
        assert seen["enable_progress_bar"] is bar


def _noise(proc) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines()
            if any(word in line for word in NOISE)]


def test_stage3_and_4_output_carries_no_third_party_noise(dataset_dir, tmp_path):
    runs = tmp_path / "runs"
    proc = run_cli("3-training/train.py", "--data", dataset_dir, "--output", runs, "--epochs", "1",
                   *TINY_TRAIN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _noise(proc) == [], proc.stdout[-2000:] + proc.stderr[-3000:]
    proc = run_cli("4-embed/embed.py", "--training-dir", runs, "--data", dataset_dir,
                   "--output", tmp_path / "emb", "--num-workers", "0", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _noise(proc) == [] and "embedding:" not in proc.stdout, proc.stdout + proc.stderr


def test_quiet_libraries_filters_named_packages_only(recwarn):
    import warnings

    from wingclr.cli import quiet_libraries

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()
        exec(compile("import warnings; warnings.warn('old API', FutureWarning)", "x", "exec"),
             {"__name__": "torchvision.models"})
        exec(compile("import warnings; warnings.warn('ours', FutureWarning)", "x", "exec"),
             {"__name__": "wingclr.models"})
    assert [str(w.message) for w in caught] == ["ours"]


# ---- CSV numbers ----

def test_write_csv_integers_as_integers_and_floats_to_seven_digits(tmp_path):
    from wingclr.outputs import write_csv

    table = pd.DataFrame({"epoch": [1.0, 2.0, np.nan], "loss": [2.4601234567, 1 / 3, 0.5],
                          "seconds": [12.3456789, 1e-7 / 3, 0.0], "stamp": [1.7e12 + 0.25, 2.0, 3.0],
                          "name": ["a", "b", "c"]})
    write_csv(tmp_path / "t.csv", table)
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[1:] == ["1,2.460123,12.34568,1700000000000.25,a",
                         "2,0.3333333,3.333333e-08,2,b", ",0.5,0,3,c"]
    back = pd.read_csv(tmp_path / "t.csv")
    np.testing.assert_allclose(back.loss, table.loss, rtol=1e-6)
    assert back.stamp[0] == table.stamp[0]  # large values keep every digit


def test_report_accuracy_row_has_the_validation_count_as_support(tmp_path):
    from types import SimpleNamespace

    from wingclr.evaluate.stage import write_reports

    y = np.array(["a"] * 10 + ["b"] * 10 + ["c"] * 6)
    val = np.zeros(len(y), bool)
    val[[0, 1, 2, 10, 11, 12, 20, 21]] = True
    pred = np.array(["a", "a", "b", "b", "b", "b", "c", "c"])
    split = SimpleNamespace(y=y, train=~val, val=val, images=np.array([f"{i}.png" for i in range(26)]))
    write_reports(tmp_path, split, {"rows": np.flatnonzero(val), "linear": pred, "knn": pred,
                                    "fold": None})
    text = (tmp_path / "report.csv").read_text()
    report = pd.read_csv(tmp_path / "report.csv").set_index("class")
    row = report.loc["accuracy"]
    assert row.support == 8 and pd.isna(row.precision) and pd.isna(row.recall)
    assert row["f1-score"] == pytest.approx(7 / 8)
    assert report.loc["a", "support"] == 3 and ".0," not in text


def test_stage4_progress_in_a_log_file_is_a_few_lines_not_a_redrawn_bar(dataset_dir, tmp_path, capsys):
    """Embedding (stage 4, stage 1's features) writes ``embedding: 1/2 batches`` lines, no tqdm ``\\r``."""
    from wingclr.data import FolderDataset, ReadSpec, scan_clusters
    from wingclr.features import iter_features
    from wingclr.models import build_backbone

    images = scan_clusters(dataset_dir / "unlabeled")
    dataset = FolderDataset(images.root, images.images[:12], ReadSpec(size=32), flag_errors=True)
    backbone, _ = build_backbone("resnet18", False)
    rows = sum(len(i) for i, _, _ in iter_features(backbone, dataset, [0.5] * 3, [0.25] * 3, batch_size=4,
                                                  desc="embedding"))
    out = capsys.readouterr().out
    assert rows == 12 and "\r" not in out
    assert out.splitlines()[-1] == "embedding: 3/3 batches"
