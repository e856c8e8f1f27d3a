"""Stages 2 -> 3 -> 4 -> 5 on a tiny generated set, and the stage 4/5 error paths."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_TRAIN, assert_one_line_error, run_cli, run_stage


@pytest.fixture(scope="module")
def pipeline(dataset_dir, tmp_path_factory):
    """Two 1-epoch runs (temperature 0.5 and 0.8) embedded and evaluated."""
    work = tmp_path_factory.mktemp("pipeline")
    runs = work / "3-training"
    for t in ("0.5", "0.8"):
        run_stage("3-training/train.py", "--data", dataset_dir, "--output", runs, "--epochs", "1",
                  "--temperature", t, *TINY_TRAIN)
    run_stage("4-embed/embed.py", "--training-dir", runs, "--data", dataset_dir,
              "--output", work / "4-embeddings", "--num-workers", "0", "--quiet")
    return work


def test_embeddings_csv_contract(pipeline, dataset_dir):
    split = pd.read_csv(dataset_dir / "split.csv")
    for run in ("simclr_bs_8_nepochs_1_temp_0.5", "simclr_bs_8_nepochs_1_temp_0.8"):
        d = pipeline / "4-embeddings" / run
        emb = pd.read_csv(d / "embeddings.csv")
        assert list(emb.columns) == (["image", "cluster", "split"] + [f"emb_{i}" for i in range(512)]
                                     + ["specimen", "source_image", "group"])
        assert len(emb) == len(split) == 30
        assert sorted(emb.image) == sorted(split.image)
        assert set(emb.split) == {"train", "validation"}
        variance = pd.read_csv(d / "pca_variance.csv")
        kept = variance[variance.explained_variance_ratio > 0.005]
        pca = pd.read_csv(d / "embeddings_pca.csv")
        assert list(pca.columns) == (["image", "cluster", "split"] + [f"PC{i + 1}" for i in range(len(kept))]
                                     + ["specimen", "source_image", "group"])
        assert len(pca) == 30 and variance.kept.sum() == len(kept)
        np.testing.assert_allclose(np.load(d / "embeddings.npy"), emb.filter(like="emb_").to_numpy(), rtol=1e-5, atol=1e-5)
        assert (d / "pca.png").stat().st_size > 0
        assert json.loads((d / "manifest.json").read_text())["counts"]["dims"] == 512


def test_evaluation_gains_one_row_per_run(pipeline):
    out = pipeline / "5-evaluation"
    emb = pipeline / "4-embeddings"
    run_stage("5-evaluation/evaluate.py", "--embeddings", emb, "--output", out,
              "--runs", emb / "simclr_bs_8_nepochs_1_temp_0.5")
    table = pd.read_csv(out / "evaluation.csv")
    assert table.run.tolist() == ["simclr_bs_8_nepochs_1_temp_0.5"]
    run_stage("5-evaluation/evaluate.py", "--embeddings", emb, "--output", out,
              "--runs", emb / "simclr_bs_8_nepochs_1_temp_0.8")
    table = pd.read_csv(out / "evaluation.csv")
    assert sorted(table.run) == ["simclr_bs_8_nepochs_1_temp_0.5", "simclr_bs_8_nepochs_1_temp_0.8"]
    for col in ("run", "backbone", "batch_size", "epochs", "temperature", "n_train", "n_val",
                "accuracy", "balanced_accuracy", "macro_f1", "knn_accuracy"):
        assert col in table.columns
    row = table.set_index("run").loc["simclr_bs_8_nepochs_1_temp_0.8"]
    assert (row.backbone, row.batch_size, row.epochs, row.temperature) == ("resnet18", 8, 1, 0.8)
    # --protocol cv: all 30 labelled images scored once, 24 training images per fold
    assert (row.n_train, row.n_val) == (24, 30) and 0 <= row.accuracy <= 1
    for name in ("report.csv", "confusion_matrix.png", "classification_report.txt"):
        assert (out / "simclr_bs_8_nepochs_1_temp_0.8" / name).exists()


def test_embed_missing_checkpoint_is_a_one_line_error(tmp_path):
    proc = run_cli("4-embed/embed.py", "--checkpoints", tmp_path / "nope.ckpt", "--output", tmp_path)
    assert_one_line_error(proc, "nope.ckpt", "does not exist")


def test_embed_refuses_to_replace_finished_embeddings(pipeline, dataset_dir):
    d = pipeline / "4-embeddings" / "simclr_bs_8_nepochs_1_temp_0.5"
    before = (d / "embeddings.csv").read_bytes()
    ckpt = pipeline / "3-training" / "simclr_bs_8_nepochs_1_temp_0.5"
    same = run_cli("4-embed/embed.py", "--checkpoints", ckpt, "--data", dataset_dir,
                   "--output", pipeline / "4-embeddings", "--num-workers", "0")
    assert same.returncode == 0 and "skip:" in same.stdout
    other = run_cli("4-embed/embed.py", "--checkpoints", ckpt, "--data", dataset_dir / "unlabeled",
                    "--output", pipeline / "4-embeddings", "--num-workers", "0")
    assert_one_line_error(other, "--overwrite")
    assert (d / "embeddings.csv").read_bytes() == before
