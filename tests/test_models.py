"""Backbone factory, weights lookup (with weights files the tests create), first-layer adaptation."""

import pytest
import torch
import torchvision

from conftest import trust_weights
from wingclr.cli import UserError
from wingclr.models import adapt_first_conv, build_backbone


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(tmp_path))
    return tmp_path


def test_imagenet_weights_are_loaded_from_weights_folder(weights_dir):
    reference = torchvision.models.resnet18(weights=None)
    torch.manual_seed(1)
    for p in reference.parameters():
        p.data.normal_()
    torch.save(reference.state_dict(), weights_dir / "resnet18-f37072fd.pth")
    trust_weights(weights_dir / "resnet18-f37072fd.pth")  # a stand-in: not the published file
    model, dim = build_backbone("resnet18", pretrained=True)
    assert dim == 512
    torch.testing.assert_close(model.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 512)


def test_missing_weights_error_names_file_url_and_random_init_flag(weights_dir):
    with pytest.raises(UserError) as err:
        build_backbone("resnet50", pretrained=True)
    msg = str(err.value)
    assert "resnet50-11ad3fa6.pth" in msg and "https://download.pytorch.org/models/" in msg
    assert str(weights_dir) in msg and "--pretrained none" in msg and "\n" not in msg


@pytest.mark.parametrize("name,dim,size", [("resnet18", 512, 64), ("efficientnet_b0", 1280, 64),
                                           ("vgg16", 4096, 64), ("vit_b_16", 768, 32)])
def test_backbones_output_their_feature_size(name, dim, size):
    model, d = build_backbone(name, pretrained=False, image_size=size)
    assert d == dim
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, size, size)).shape == (1, dim)


@pytest.mark.parametrize("chans,rgb", [(1, []), (4, [0, 1, 2]), (7, [0, 1, 2]), (408, [2, 1, 0])])
def test_first_conv_adaptation_keeps_rgb_filters(chans, rgb):
    conv = torchvision.models.resnet18(weights=None).conv1
    new = adapt_first_conv(conv, chans, rgb)
    assert new.weight.shape == (64, chans, 7, 7)
    for i, band in enumerate(rgb):
        torch.testing.assert_close(new.weight[:, band], conv.weight[:, i])
    others = [c for c in range(chans) if c not in rgb]
    expected = conv.weight.sum(1) if not rgb else conv.weight.mean(1)
    for c in others[:3]:
        torch.testing.assert_close(new.weight[:, c], expected)


@pytest.mark.parametrize("chans", [1, 4, 7, 408])
def test_backbone_forward_for_any_band_count(weights_dir, chans):
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), weights_dir / "resnet18-f37072fd.pth")
    trust_weights(weights_dir / "resnet18-f37072fd.pth")  # a stand-in: not the published file
    rgb = [0, 1, 2] if chans >= 3 else []
    model, dim = build_backbone("resnet18", pretrained=True, in_chans=chans, rgb_bands=rgb)
    assert model.conv1.weight.shape[1] == chans
    if rgb:
        torch.testing.assert_close(model.conv1.weight[:, :3], reference.conv1.weight)
    torch.testing.assert_close(model.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    with torch.no_grad():
        assert model.eval()(torch.rand(2, chans, 32, 32)).shape == (2, dim)
