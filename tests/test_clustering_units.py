"""Stage 1 building blocks: silhouette, sweep, run modes, plot windows, feature cache resume."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from torch import nn

from conftest import load_stage
from wingclr.cli import UserError
from wingclr.cluster.clustering import cluster, silhouette, sweep, sweep_grid


@pytest.fixture
def blobs():
    """Three well-separated 3-D blobs of 20 points plus 3 far-away single points."""
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0], [20, 0, 0], [0, 20, 0]], np.float32)
    pts = np.concatenate([c + rng.normal(0, 0.5, (20, 3)) for c in centres])
    lone = np.array([[60, 60, 60], [-60, 60, -60], [60, -60, 60]], np.float32)
    return np.concatenate([pts, lone]).astype(np.float32), np.repeat([0, 1, 2], 20)


def test_silhouette_matches_sklearn_without_outliers(blobs):
    from sklearn.metrics import silhouette_score

    x, _ = blobs
    result = cluster(x, min_cluster_size=5)
    assert result.n_clusters == 3 and result.n_outliers == 3
    kept = result.labels >= 0
    assert result.silhouette == pytest.approx(silhouette_score(x[kept], result.labels[kept]), abs=1e-5)
    assert result.silhouette_values.shape == (kept.sum(),)
    sampled, values, note = silhouette(x, result.labels, max_points=30)
    assert "sample of 30" in note and np.isnan(values).sum() == kept.sum() - 30
    assert sampled == pytest.approx(result.silhouette, abs=0.1)


def test_silhouette_undefined_cases_explain_themselves():
    x = np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32)
    score, _, note = silhouette(x, np.full(10, -1))
    assert score is None and "no clusters" in note and "--min-cluster-size" in note
    score, _, note = silhouette(x, np.r_[np.zeros(8, int), -1, -1])
    assert score is None and "only one cluster" in note


def test_sweep_table_covers_the_grid(blobs):
    x, _ = blobs
    grid = sweep_grid(10, len(x), epsilon=0.3)
    assert (10, 0.3) in grid and (5, 0.0) in grid and (20, 1.0) in grid
    assert all(2 <= m <= len(x) for m, _ in grid)
    table = sweep(x, grid)
    assert len(table) == len(grid)
    row = table[(table.min_cluster_size == 10) & (table.cluster_selection_epsilon == 0)]
    assert row.clusters.item() == 3 and row.outliers.item() == 3
    assert sweep_grid(20, 12) == [(m, e) for m in (10,) for e in (0.0, 0.1, 0.25, 0.5, 1.0)]


def _settings(**kw):
    """Stage 1's settings with no flag typed, ``kw`` changed."""
    from wingclr.cluster.settings import ClusterSettings

    parser = load_stage("1-clustering/cluster.py").get_args_parser()
    return replace(ClusterSettings.from_args(parser.parse_args([])), **kw)


def test_run_modes():
    from wingclr.cluster.stage import decide_mode, with_batch_defaults

    assert decide_mode(_settings(), stdin_is_tty=True) == "interactive"
    assert decide_mode(_settings(interactive=True), stdin_is_tty=False) == "interactive"
    settings = _settings(yes=True)
    assert decide_mode(settings, stdin_is_tty=True) == "batch"
    settings = with_batch_defaults(settings)
    assert (settings.min_cluster_size, settings.cluster_selection_epsilon) == (20, 0.0)
    given = _settings(min_cluster_size=5, cluster_selection_epsilon=0.1)
    assert decide_mode(given, stdin_is_tty=False) == "batch"
    assert decide_mode(_settings(sweep=True), stdin_is_tty=False) == "sweep-only"
    with pytest.raises(UserError, match="--min-cluster-size N --cluster-selection-epsilon E --yes"):
        decide_mode(_settings(min_cluster_size=5), stdin_is_tty=False)
    with pytest.raises(UserError, match="exclude"):
        decide_mode(_settings(yes=True, interactive=True), stdin_is_tty=True)


def test_plots_are_shown_only_with_a_display(blobs, tmp_path, monkeypatch):
    import wingclr.cluster.figures as plots
    import wingclr.cluster.stage as stage

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if plots.sys.platform.startswith("linux"):
        assert not plots.display_available()
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr("matplotlib.get_backend", lambda: "agg")
    assert not plots.display_available()  # CI / SLURM: Agg backend never blocks

    shown = []
    monkeypatch.setattr(stage, "show_figures", lambda figs: shown.append(len(figs)))
    x, _ = blobs
    settings = _settings(min_cluster_size=5, cluster_selection_epsilon=0.0)
    result, tried, kept = stage.choose(x, settings, mode="batch", out=tmp_path, degenerate=False, show=True)
    assert shown == [2] and len(tried) == 1 and result.n_clusters == 3 and kept == (5, 0.0)
    assert (tmp_path / "umap_3d.png").exists() and (tmp_path / "silhouette.png").exists()
    stage.choose(x, settings, mode="batch", out=tmp_path, degenerate=False, show=False)
    assert shown == [2]


class Tiny(nn.Module):
    """A 4-d feature extractor; raises KeyboardInterrupt on forward call ``fail_at``."""

    def __init__(self, fail_at=None):
        super().__init__()
        self.conv, self.calls, self.fail_at = nn.Conv2d(3, 4, 3), 0, fail_at

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.conv(x).mean((2, 3))


def test_interrupted_extraction_resumes_from_the_saved_cache(demo_set, tmp_path):
    from wingclr.features import FeatureConfig, compute_features, load_cache

    root = demo_set / "specimens"
    images = sorted(p.relative_to(root) for p in root.glob("*.png"))[:12]
    config = FeatureConfig("tiny", pretrained=False, input_size=32)
    made = []

    def builder(fail_at):
        def build(*args):
            made.append(Tiny(fail_at))
            return made[-1], 4
        return build

    with pytest.raises(KeyboardInterrupt):
        compute_features(root, images, tmp_path, config, batch_size=4, progress=False, save_every=0,
                         builder=builder(3))
    index, values = load_cache(tmp_path, config)
    assert len(index) == 8 and values.shape == (8, 4)  # two batches were saved before the stop
    feats = compute_features(root, images, tmp_path, config, batch_size=4, progress=False,
                             builder=builder(None))
    assert feats.computed == 4 and made[-1].calls == 1 and feats.ok.all()
    # the resumed features equal a fresh, uninterrupted extraction (seeded weights)
    fresh = compute_features(root, images, tmp_path / "fresh", config, batch_size=4, progress=False,
                             builder=builder(None))
    np.testing.assert_allclose(feats.values, fresh.values, rtol=1e-5, atol=1e-6)
    other = FeatureConfig("tiny", pretrained=False, input_size=40)
    assert load_cache(tmp_path, other) is None  # other settings: the cache is not used
