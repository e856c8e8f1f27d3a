"""The batched (device) augmentation draws the same distribution as lightly's per-image path."""

import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from scipy.stats import ks_2samp

from wingclr.train.augment import AugmentConfig, BatchAugment, adjust_hue, lightly_transform, sample_crops

N = 4000


def seed_all(s: int) -> None:
    random.seed(s), np.random.seed(s), torch.manual_seed(s)


def test_crop_parameters_match_torchvision_random_resized_crop():
    seed_all(0)
    h, w = 60, 90
    img = torch.zeros(3, h, w)
    ref = np.array([T.RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(N)],
                   dtype=float)  # i, j, h, w
    box = sample_crops(N, h, w, (0.08, 1.0)).numpy()  # x0, y0, x1, y1
    ours = {"area": (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]) / (h * w),
            "aspect": (box[:, 2] - box[:, 0]) / (box[:, 3] - box[:, 1]),
            "x0": box[:, 0], "y0": box[:, 1]}
    theirs = {"area": ref[:, 2] * ref[:, 3] / (h * w), "aspect": ref[:, 3] / ref[:, 2],
              "x0": ref[:, 1], "y0": ref[:, 0]}
    for key in ours:
        assert ks_2samp(ours[key], theirs[key]).pvalue > 1e-3, key
    assert (box[:, 2] <= w).all() and (box[:, 3] <= h).all() and (box[:, :2] >= 0).all()


def test_jitter_factors_order_and_probabilities_match_torchvision():
    seed_all(1)
    cfg = AugmentConfig()
    aug = BatchAugment(cfg, 3)
    p = aug.sample(N, 32, 32)
    jitter = T.ColorJitter(0.8, 0.8, 0.8, 0.2)
    ref = [T.ColorJitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
           for _ in range(N)]
    for k in range(4):
        theirs = np.array([r[k + 1] for r in ref], dtype=float)
        assert ks_2samp(p["factors"][:, k].numpy(), theirs).pvalue > 1e-3, k
    first_op = np.bincount(p["order"][:, 0].numpy(), minlength=4) / N
    np.testing.assert_allclose(first_op, 0.25, atol=0.03)
    for key, prob in [("hflip", 0.5), ("jitter", 0.8), ("gray", 0.2), ("blur", 0.5), ("vflip", 0.0)]:
        assert abs(p[key].float().mean().item() - prob) < 0.03, key
    assert ks_2samp(p["sigma"].numpy(), np.random.uniform(0.1, 2.0, N)).pvalue > 1e-3


def test_hue_shift_equals_torchvision():
    import torchvision.transforms.v2.functional as F

    x = torch.rand(5, 3, 16, 16)
    for f in (-0.2, -0.03, 0.0, 0.11, 0.2):
        ref = torch.stack([F.adjust_hue(xi, f) for xi in x])
        torch.testing.assert_close(adjust_hue(x, torch.full((5,), f)), ref, atol=1e-5, rtol=0)


def view_stats(views: np.ndarray) -> dict:
    """Per-view statistics of ``(N, 3, S, S)`` views in [0, 1]."""
    gray = np.abs(views[:, 0] - views[:, 1]).max((1, 2)) < 0.02
    return {"mean": views.mean((1, 2, 3)), "std": views.std((1, 2, 3)),
            "red_minus_blue": (views[:, 0] - views[:, 2]).mean((1, 2)), "gray": gray.astype(float),
            "sharpness": np.abs(np.diff(views, axis=-1)).mean((1, 2, 3))}


@pytest.fixture(scope="module")
def specimen():
    from wingclr.demo import make_specimen

    return make_specimen(np.random.default_rng(0), "eyespots", 64).image


def test_output_statistics_of_both_paths_agree(specimen):
    """Same image, 600 views each way: the distributions of simple view statistics agree."""
    seed_all(2)
    cfg = AugmentConfig(input_size=48, mean=(0, 0, 0), std=(1, 1, 1))
    lightly = lightly_transform(cfg).transforms[0]  # one view per call
    pil = Image.fromarray(specimen)
    ref = np.stack([lightly(pil).numpy() for _ in range(600)])
    batch = torch.from_numpy(specimen).permute(2, 0, 1)[None].repeat(600, 1, 1, 1)
    ours = BatchAugment(cfg, 3)(batch).numpy()
    assert ours.shape == ref.shape
    a, b = view_stats(ours), view_stats(ref)
    for key in a:
        assert ks_2samp(a[key], b[key]).pvalue > 1e-3, (key, a[key].mean(), b[key].mean())


def test_multiband_colour_ops_touch_rgb_bands_only():
    seed_all(3)
    cfg = AugmentConfig(input_size=16, mean=[0] * 5, std=[1] * 5, band_jitter_prob=0.0,
                        blur_prob=0.0, min_scale=1.0, hf_prob=0.0)
    aug = BatchAugment(cfg, 5)
    x = torch.rand(8, 5, 16, 16)
    x[:, 3:] = 0.5
    out = aug(x)
    assert torch.allclose(out[:, 3:], torch.full_like(out[:, 3:], 0.5), atol=1e-5)
    assert not torch.allclose(out[:, :3], x[:, :3], atol=1e-3)


def test_gaussian_blur_equals_torchvision_per_image_sigma():
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    from wingclr.train.augment import gaussian_blur

    x = torch.rand(3, 4, 20, 17, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.3, 1.0, 2.0])
    out = gaussian_blur(x, sigma, sigma_max=2.0)  # radius 6: kernel 13
    for i, s in enumerate(sigma.tolist()):
        torch.testing.assert_close(out[i], tv_blur(x[i], [13, 13], [s, s]), atol=1e-5, rtol=1e-5)


def test_flips_in_the_sampling_grid_equal_flipping_the_resized_crop():
    from wingclr.train.augment import crop_resize

    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 2, 30, 40, generator=g)
    boxes = sample_crops(6, 30, 40, (0.2, 1.0), g=g)
    h = torch.tensor([True, False, True, False, True, False])
    v = torch.tensor([True, True, False, False, True, False])
    plain = crop_resize(x, boxes, 16)
    expected = torch.where(h.view(-1, 1, 1, 1), plain.flip(-1), plain)
    expected = torch.where(v.view(-1, 1, 1, 1), expected.flip(-2), expected)
    torch.testing.assert_close(crop_resize(x, boxes, 16, h, v), expected, atol=1e-5, rtol=1e-5)


def test_band_jitter_scales_only_the_selected_bands():
    cfg = AugmentConfig(input_size=8, rgb_bands=[], mean=[0] * 4, std=[1] * 4, band_jitter=0.4)
    aug = BatchAugment(cfg, 4)
    x = torch.rand(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    p = aug.sample(3, 8, 8, g=torch.Generator().manual_seed(3))
    on = p["band_jitter"].view(3, 4, 1, 1)
    bright, contrast = p["band_factors"].view(3, 2, 4, 1, 1).unbind(1)
    mean = x.mean((2, 3), keepdim=True)
    expected = torch.where(on, (((x - mean) * contrast + mean) * bright).clamp(0, 1), x)
    torch.testing.assert_close(aug._bands(x.clone(), p), expected)
    assert 0 < on.sum() < on.numel()  # some bands jittered, some left alone


def test_large_images_are_augmented_in_slices_with_the_same_result(monkeypatch):
    import wingclr.train.augment as A

    aug = BatchAugment(AugmentConfig(input_size=12, rgb_bands=[0, 1, 2], mean=[0] * 5, std=[1] * 5), 5)
    x = torch.randint(0, 255, (7, 5, 16, 16), dtype=torch.uint8)
    torch.manual_seed(4)
    whole = aug(x)
    monkeypatch.setattr(A, "CHUNK_BYTES", 2 * 5 * 16 * 16 * 4)  # two images per slice
    calls = []
    monkeypatch.setattr(aug, "apply", lambda xs, p, f=aug.apply: calls.append(len(xs)) or f(xs, p))
    torch.manual_seed(4)
    sliced = aug(x)
    assert calls == [2, 2, 2, 1]
    torch.testing.assert_close(sliced, whole)


def test_turns_in_the_sampling_grid_equal_rot90_of_the_flipped_crop():
    from wingclr.train.augment import crop_resize

    g = torch.Generator().manual_seed(5)
    x = torch.rand(6, 2, 30, 40, generator=g)
    boxes = sample_crops(6, 30, 40, (0.2, 1.0), g=g)
    h = torch.tensor([True, False, True, False, True, False])
    turn = torch.tensor([True, True, False, True, False, False])
    flipped = crop_resize(x, boxes, 16, h)
    expected = torch.where(turn.view(-1, 1, 1, 1), flipped.rot90(1, (2, 3)), flipped)
    torch.testing.assert_close(crop_resize(x, boxes, 16, h, None, turn), expected, atol=1e-5, rtol=1e-5)


def per_image_view(aug: BatchAugment, img: torch.Tensor, p: dict, i: int) -> torch.Tensor:
    """One image's view with torchvision's per-image ops and the batch's parameters of image ``i``."""
    import torchvision.transforms.v2.functional as F

    from wingclr.train.augment import crop_resize

    cfg = aug.cfg
    y = crop_resize(img[None].float() / 255, p["box"][i:i + 1], cfg.input_size, p["hflip"][i:i + 1],
                    p["vflip"][i:i + 1])[0]
    if p["rotate"][i]:
        y = y.rot90(1, (1, 2))
    ops = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
    if p["jitter"][i]:
        for op in p["order"][i].tolist():
            y = ops[op](y, float(p["factors"][i, op]))
    if p["gray"][i]:
        y = F.rgb_to_grayscale(y, num_output_channels=3)
    if p["blur"][i]:
        s = float(p["sigma"][i])
        y = F.gaussian_blur(y, [13, 13], [s, s])
    return (y - aug.mean[0]) / aug.std[0]


def test_batched_view_equals_torchvision_ops_applied_image_by_image():
    """Whole-batch ops with per-image coin flips give each image exactly its own ops."""
    cfg = AugmentConfig(input_size=24, vf_prob=0.5, rr_prob=0.5)
    aug = BatchAugment(cfg, 3)
    x = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    p = aug.sample(24, 32, 32, g=torch.Generator().manual_seed(7))
    assert 0 < p["blur"].sum() < 24 and 0 < p["gray"].sum() < 24 and 0 < p["rotate"].sum() < 24
    out = aug.apply(x, p)
    for i in range(24):
        torch.testing.assert_close(out[i], per_image_view(aug, x[i], p, i), atol=1e-3, rtol=0)


@pytest.mark.parametrize("chans, rgb", [(3, (0, 1, 2)), (5, (1, 2, 3)), (4, ())])
def test_batched_augmentation_never_waits_for_the_device(chans, rgb):
    """No op whose result the host must read (nonzero, boolean masks, .item()): 0 syncs on a GPU."""
    from wingclr.train.syncs import SyncCounter

    cfg = AugmentConfig(input_size=16, vf_prob=0.5, rr_prob=0.5, rgb_bands=rgb, mean=[0.5] * chans,
                        std=[0.25] * chans)
    aug = BatchAugment(cfg, chans)
    x = torch.randint(0, 256, (8, chans, 20, 20), dtype=torch.uint8)
    with SyncCounter() as counter:
        aug(x)
    assert counter.counts == {}
    with SyncCounter() as counter:  # the counter itself sees what would sync
        torch.nonzero(x), bool(x.sum() > 0), x[x > 3]
    assert counter.counts["nonzero"] >= 1 and counter.counts["_local_scalar_dense"] >= 1
    assert counter.counts["index"] == 1
