"""Stage 5 end to end on fake runs: grid plot and sorted table, baselines, skip/refuse, UMAP."""

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import assert_one_line_error, run_cli, run_stage, trust_weights
from wingclr.models import build_backbone, channel_stats
from wingclr.outputs import write_manifest

EVALUATE = "5-evaluation/evaluate.py"
MEAN, STD = channel_stats(3, [0, 1, 2])
MODEL = {"backbone": "resnet18", "in_chans": 3, "rgb_bands": [0, 1, 2], "bands": None,
         "input_size": 32, "mean": MEAN, "std": STD, "background": [255, 255, 255],
         "scale16": "full"}


def fake_run(emb_root, dataset_dir, batch, epochs, temp, noise, seed=0):
    """An embedding folder as stage 4 writes it: class centres + ``noise`` (more = worse)."""
    split = pd.read_csv(dataset_dir / "split.csv", dtype=str)[["image", "cluster", "split"]]
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(split.cluster.nunique(), 16))
    codes = pd.factorize(split.cluster, sort=True)[0]
    feats = (centres[codes] + rng.normal(0, noise, (len(split), 16))).astype(np.float32)
    name = f"simclr_bs_{batch}_nepochs_{epochs}_temp_{temp:g}"
    out = emb_root / name
    out.mkdir(parents=True)
    np.save(out / "embeddings.npy", feats)
    pd.concat([split, pd.DataFrame(feats, columns=[f"emb_{i}" for i in range(16)])],
              axis=1).to_csv(out / "embeddings.csv", index=False)
    run_values = {"batch_size": batch, "epochs": epochs, "temperature": temp}
    write_manifest(out, "4-embed", {"checkpoint": f"{name}.ckpt", "data": str(dataset_dir)},
                   counts={"images": len(split)}, model={**MODEL, "settings": run_values})
    return out


@pytest.fixture(scope="module")
def three_runs(dataset_dir, tmp_path_factory):
    emb = tmp_path_factory.mktemp("fake") / "4-embeddings"
    return [fake_run(emb, dataset_dir, 64, 50, 0.1, noise=0.05, seed=1),
            fake_run(emb, dataset_dir, 128, 50, 0.5, noise=3.0, seed=2),
            fake_run(emb, dataset_dir, 64, 100, 0.5, noise=30.0, seed=3)]


@pytest.fixture(scope="module")
def grid_eval(three_runs, tmp_path_factory):
    """evaluate.py --runs <3 fake runs + 1 unfinished training run>, pixel baseline, UMAP on."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("eval") / "5-evaluation"
    unfinished = three_runs[0].parent.parent / "3-training" / "simclr_bs_256_nepochs_300_temp_0.8"
    unfinished.mkdir(parents=True)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        table = run_stage(EVALUATE, "--runs", *three_runs, unfinished, "--output", out,
                          "--baselines", "pixel", "--num-workers", "0")
    return out, table, stdout.getvalue()


def test_grid_table_is_sorted_best_first_with_baselines_below(grid_eval, three_runs):
    out, table, stdout = grid_eval
    csv = pd.read_csv(out / "evaluation.csv")
    assert sorted(csv.run) == sorted(r.name for r in three_runs) == sorted(table.run)
    assert "skip:" in stdout and "simclr_bs_256_nepochs_300_temp_0.8" in stdout  # unfinished run
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["run", "batch"])
    printed = [line.split()[0] for line in lines[header + 1:header + 4]]
    assert sorted(printed) == sorted(csv.run)
    acc = csv.set_index("run").loc[printed, "accuracy"].to_numpy()
    assert (np.diff(acc) <= 0).all() and acc[0] > acc[-1]  # best first; noise 0.05 beats 30
    assert lines[header + 4].lstrip().startswith("[baseline] pixel PCA (32 px)")
    assert "best run" in stdout and (out / "summary.txt").read_text().strip() in stdout


def test_grid_summary_png_has_a_panel_per_epoch_count_and_a_line_per_batch(grid_eval):
    from wingclr.evaluate.gridplot import grid_figure

    out, table, _ = grid_eval
    assert (out / "grid_summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = grid_figure(table)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["50 epochs", "100 epochs"]
    by_run = table.set_index("run")
    lines50 = {ln.get_label(): ln for ln in panels[0].get_lines()}
    assert set(lines50) == {"batch 64", "batch 128", "pixel PCA baseline"}
    assert list(lines50["batch 64"].get_xdata()) == [0.1]
    assert lines50["batch 64"].get_ydata()[0] == by_run.loc["simclr_bs_64_nepochs_50_temp_0.1", "accuracy"]
    assert lines50["batch 128"].get_ydata()[0] == by_run.loc["simclr_bs_128_nepochs_50_temp_0.5", "accuracy"]
    lines100 = {ln.get_label(): ln for ln in panels[1].get_lines()}
    assert set(lines100) == {"batch 64", "pixel PCA baseline"}
    assert lines100["pixel PCA baseline"].get_ydata()[0] == pytest.approx(table.pixel_pca_accuracy.iloc[0])


def test_baseline_is_computed_once_per_split_and_shared_by_runs(grid_eval):
    out, table, stdout = grid_eval
    assert len(list((out / "baselines").glob("pixel_pca-*.json"))) == 1
    assert stdout.count("baseline: pixel PCA") == 1
    assert table.pixel_pca_accuracy.nunique() == 1 and table.pixel_pca_accuracy.notna().all()
    assert table.dataset.nunique() == 1
    base = pd.read_csv(out / "baselines.csv")
    assert base.baseline.tolist() == ["pixel PCA (32 px)"] and base.n_val.iloc[0] == table.n_val.iloc[0]
    for col in ("silhouette", "davies_bouldin", "knn_accuracy", "balanced_accuracy", "macro_f1"):
        assert table[col].notna().all()
    best = table.set_index("run").loc["simclr_bs_64_nepochs_50_temp_0.1"]
    worst = table.set_index("run").loc["simclr_bs_64_nepochs_100_temp_0.5"]
    assert best.silhouette > worst.silhouette and best.davies_bouldin < worst.davies_bouldin


def test_each_run_gets_its_report_files_and_a_umap(grid_eval, three_runs):
    out, _, _ = grid_eval
    for run in three_runs:
        d = out / run.name
        for name in ("report.csv", "classification_report.txt", "predictions.csv",
                     "confusion_matrix.png", "umap.png", "manifest.json"):
            assert (d / name).stat().st_size > 0, name


def test_finished_runs_are_skipped_and_other_settings_refused(grid_eval, three_runs):
    out, table, _ = grid_eval
    run = three_runs[0]
    before = (out / run.name / "report.csv").read_bytes()
    again = run_cli(EVALUATE, "--runs", run, "--output", out, "--no-baselines", "--no-umap")
    assert again.returncode == 0 and "skip:" in again.stdout
    assert (out / run.name / "report.csv").read_bytes() == before
    row = pd.read_csv(out / "evaluation.csv").set_index("run").loc[run.name]
    assert row.accuracy == table.set_index("run").loc[run.name, "accuracy"]
    other = run_cli(EVALUATE, "--runs", run, "--output", out, "--knn-k", "3", "--no-baselines",
                    "--no-umap")
    assert_one_line_error(other, "--overwrite", "knn_k")


def test_imagenet_baseline_uses_the_weights_file_or_is_left_empty(three_runs, tmp_path, monkeypatch):
    from wingclr.evaluate.baselines import baseline_model

    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(tmp_path / "weights"))
    out = tmp_path / "5-evaluation"
    args = ("--runs", three_runs[0], "--output", out, "--baselines", "imagenet,random",
            "--no-umap", "--num-workers", "0")
    missing = run_stage(EVALUATE, *args)
    assert missing.imagenet_accuracy.isna().all() and missing.random_init_accuracy.notna().all()
    torch.manual_seed(123)
    model, _ = build_backbone("resnet18", False)
    state = {k: v for k, v in model.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    (tmp_path / "weights").mkdir()
    torch.save(state, tmp_path / "weights" / "resnet18-f37072fd.pth")
    trust_weights(tmp_path / "weights" / "resnet18-f37072fd.pth")  # a stand-in: not the published file
    found = run_stage(EVALUATE, *args)
    assert found.imagenet_accuracy.notna().all()
    loaded = baseline_model("imagenet", MODEL, seed=0).state_dict()
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"])
    random = baseline_model("random", MODEL, seed=0).state_dict()
    assert not torch.equal(random["conv1.weight"], state["conv1.weight"])


def test_missing_weights_note_names_the_file(three_runs, tmp_path):
    proc = run_cli(EVALUATE, "--runs", three_runs[1], "--output", tmp_path, "--baselines",
                   "imagenet", "--no-umap")
    assert proc.returncode == 0, proc.stderr[-2000:]
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note: imagenet")]
    assert len(notes) == 1 and "resnet18-f37072fd.pth" in notes[0] and "weights" in notes[0]


def test_pixel_pca_is_fitted_on_training_images_only(dataset_dir):
    from wingclr.evaluate.baselines import baseline_features
    from wingclr.evaluate.stage import load_split

    ids = pd.read_csv(dataset_dir / "split.csv", dtype=str)
    split = load_split(ids, None, dataset_dir / "unlabeled")
    feats, ok = baseline_features("pixel", MODEL, split, pixel_size=16, num_workers=0)
    assert ok.all() and feats.shape == (len(ids), min(100, int(split.train.sum()) - 1))
    # the same images, but validation rows pointing at other files: train features unchanged
    swapped = load_split(ids, None, dataset_dir / "unlabeled")
    swapped.images = np.where(split.val, np.roll(split.images, 1), split.images)
    feats2, _ = baseline_features("pixel", MODEL, swapped, pixel_size=16, num_workers=0)
    np.testing.assert_allclose(feats2[split.train], feats[split.train], atol=1e-4)
    assert not np.allclose(feats2[split.val], feats[split.val], atol=1e-4)


def test_bad_flags_and_missing_embeddings_are_one_line_errors(tmp_path):
    bad = run_cli(EVALUATE, "--embeddings", tmp_path, "--output", tmp_path / "o", "--baselines", "pca")
    assert_one_line_error(bad, "pca", "--baselines")
    empty = run_cli(EVALUATE, "--embeddings", tmp_path, "--output", tmp_path / "o")
    assert_one_line_error(empty, str(tmp_path), "4-embed")


def test_stage5_embeds_through_stage4_and_its_checks(tmp_path):
    from conftest import fake_checkpoint

    (tmp_path / "run").mkdir()
    ckpt = fake_checkpoint(tmp_path / "run" / "r.ckpt")
    (tmp_path / "emb").write_text("not a folder")
    proc = run_cli(EVALUATE, "--runs", ckpt, "--embeddings", tmp_path / "emb", "--output", tmp_path / "o")
    assert_one_line_error(proc, "--embeddings", "is a file, not a folder")


def test_training_runs_without_embeddings_are_embedded_first(dataset_dir, tmp_path):
    from conftest import TINY_TRAIN

    import contextlib
    import io

    runs, cache = tmp_path / "3-training", tmp_path / "cache"
    run_stage("3-training/train.py", "--data", dataset_dir, "--output", runs, "--epochs", "1",
              "--augment-on", "device", "--cache-dir", cache, *TINY_TRAIN)
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        table = run_stage(EVALUATE, "--runs", run, "--embeddings", tmp_path / "4-embeddings",
                          "--data", dataset_dir, "--output", tmp_path / "5-evaluation", "--no-umap",
                          "--no-baselines", "--num-workers", "0", "--cache-dir", cache)
    assert (tmp_path / "4-embeddings" / run.name / "embeddings.csv").exists()
    assert "reading images from the cache" in stdout.getvalue()  # stage 3's cache, not decoded again
    assert table.run.tolist() == [run.name] and table.n_val.iloc[0] == 30  # cv: every labelled image


def test_images_gone_since_stage4_leave_the_baseline_empty_not_the_stage_unfinished(dataset_dir, tmp_path):
    import shutil

    data = tmp_path / "2-dataset"
    shutil.copytree(dataset_dir, data, symlinks=True)
    run = fake_run(tmp_path / "4-embeddings", data, 64, 50, 0.5, noise=0.05)
    shutil.rmtree(data / "unlabeled")
    (data / "unlabeled").mkdir()
    proc = run_cli(EVALUATE, "--runs", run, "--output", tmp_path / "5", "--baselines", "pixel",
                   "--no-umap", "--num-workers", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note: pixel")]
    assert len(notes) == 1 and "can be read now" in notes[0] and "--data" in notes[0]
    table = pd.read_csv(tmp_path / "5" / "evaluation.csv")
    assert table.pixel_pca_accuracy.isna().all() and table.accuracy.notna().all()
