"""Grad-CAM heat maps (stage 5, ``--gradcam N``): which parts of a specimen drive the embedding.

Two questions per specimen, both answered with the PyPI package ``grad-cam``
(``pytorch_grad_cam.GradCAM``) on the run's own backbone:

* **probe**: the linear probe's predicted class. The fitted scikit-learn pipeline
  (``StandardScaler`` + ``LogisticRegression``) becomes one ``torch.nn.Linear`` after the backbone
  (:class:`ProbeHead`), and the target is that class's logit.
* **similarity**: the cosine similarity of the specimen's embedding to its nearest neighbour's
  embedding (:class:`SimilarityTarget`): what makes the two look alike to the network.

The target layer is the last convolutional stage (:func:`target_layers`): ``layer4[-1]`` of a
ResNet, ``conv_head`` of timm EfficientNets, the last stage or feature block of other CNNs, and the
last block's first norm of a ViT (tokens reshaped to a grid). Maps are computed on the letterboxed
model input, cropped back to the image and resized to its size; for stage 0's transparent PNGs they
are multiplied by the alpha (zero on the background) and rescaled to [0, 1] within the specimen,
so a bright background cannot dominate. Multi-band stacks go through the model with all their
bands and are shown through their RGB bands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..outputs import fit_name
from ..plotting import pyplot, save_figure
from ..probe import fit_probe
from ..thumbnails import display_bands, fit_size, read_rgba


class ProbeHead(nn.Module):
    """A fitted ``StandardScaler`` + ``LogisticRegression`` pipeline as one linear layer.

    ``logits = ((x - mean) / scale) @ coef.T + intercept`` folded into ``x @ W.T + b``; a binary
    probe gets the two logits ``(-z / 2, z / 2)`` (same softmax as scikit-learn's sigmoid).

    Attributes:
        linear: ``(D,) -> (K,)``.
        classes: ``(K,)`` class names in logit order.
    """

    def __init__(self, pipeline):
        super().__init__()
        scaler, logreg = pipeline[0], pipeline[-1]
        coef = np.asarray(logreg.coef_, np.float64)          # (K or 1, D)
        intercept = np.asarray(logreg.intercept_, np.float64)
        mean = getattr(scaler, "mean_", None)
        scale = getattr(scaler, "scale_", None)
        mean = np.zeros(coef.shape[1]) if mean is None else mean
        scale = np.ones(coef.shape[1]) if scale is None else scale
        w = coef / scale
        b = intercept - w @ mean
        if w.shape[0] == 1:  # binary: sigmoid(z) == softmax((-z/2, z/2))[1]
            w, b = np.concatenate([-w / 2, w / 2]), np.concatenate([-b / 2, b / 2])
        self.linear = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(w).float())
            self.linear.bias.copy_(torch.from_numpy(b).float())
        self.classes = np.asarray(logreg.classes_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` embeddings -> ``(B, K)`` logits."""
        return self.linear(x)


class SimilarityTarget:
    """Grad-CAM target: cosine similarity of the model output to a reference embedding."""

    def __init__(self, reference: np.ndarray | torch.Tensor):
        self.reference = torch.tensor(np.array(reference, np.float32))  # a copy: inputs may be read-only

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        ref = self.reference.to(output.device, output.dtype)
        return torch.nn.functional.cosine_similarity(output.reshape(1, -1), ref.reshape(1, -1))[0]


class ClassTarget:
    """Grad-CAM target: the logit of class ``index``."""

    def __init__(self, index: int):
        self.index = int(index)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[..., self.index]


def _vit_reshape(prefix: int) -> Callable:
    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        grid = tokens[:, prefix:, :]
        side = int(round(grid.shape[1] ** 0.5))
        return grid.reshape(grid.shape[0], side, side, grid.shape[2]).permute(0, 3, 1, 2)
    return reshape


def target_layers(model: nn.Module) -> tuple[list[nn.Module], Callable | None]:
    """The layer Grad-CAM reads and, for ViTs, how its tokens become a ``(B, C, h, w)`` map.

    ResNets (torchvision, timm): ``layer4[-1]``; timm EfficientNet/MobileNet: ``conv_head``;
    models with ``stages`` (ConvNeXt, ...): the last stage; torchvision ``features`` CNNs (VGG,
    EfficientNet): the last feature block that is not pooling; timm ViTs: ``blocks[-1].norm1``;
    torchvision ViT: ``encoder.layers[-1].ln_1``; anything else: its last ``Conv2d``.

    Returns:
        ``([layer], reshape_transform or None)``.
    """
    if hasattr(model, "layer4"):
        return [model.layer4[-1]], None
    if hasattr(model, "conv_head"):
        return [model.conv_head], None
    if hasattr(model, "blocks") and hasattr(model, "patch_embed"):
        return [model.blocks[-1].norm1], _vit_reshape(int(getattr(model, "num_prefix_tokens", 1)))
    if hasattr(model, "encoder") and hasattr(model.encoder, "layers"):
        return [model.encoder.layers[-1].ln_1], _vit_reshape(1)
    if hasattr(model, "stages"):
        return [model.stages[-1]], None
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        blocks = [m for m in features if not isinstance(m, (nn.MaxPool2d, nn.AvgPool2d,
                                                            nn.AdaptiveAvgPool2d))]
        if blocks:
            return [blocks[-1]], None
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"no convolution in {type(model).__name__}: Grad-CAM has no layer to read")
    return [convs[-1]], None


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    """Dotted name of ``layer`` inside ``model`` (e.g. ``layer4.1``), or its class name."""
    return next((name for name, m in model.named_modules() if m is layer and name),
                type(layer).__name__)


def model_input(path: Path, meta: dict) -> tuple[torch.Tensor, np.ndarray]:
    """The image as the run's model sees it, and as a person sees it.

    Returns:
        ``(x (1, C, S, S) normalised float32, rgba (H, W, 4) uint8)``.
    """
    from ..data import read_spec

    arr = read_spec(meta).load(Path(path))  # (S, S, C), letterboxed like stage 4
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float()[None] / 255
    mean = torch.tensor(meta["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"], dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std, read_rgba(path, display_bands(meta), meta.get("scale16", "full"))


def to_image(cam: np.ndarray, shape: tuple[int, int], alpha: np.ndarray | None = None) -> np.ndarray:
    """A map on the letterboxed ``(S, S)`` input back onto the ``(H, W)`` image, masked.

    Args:
        cam: ``(S, S)`` map (>= 0).
        shape: the image's ``(H, W)``.
        alpha: ``(H, W)`` uint8 alpha, or None.

    Returns:
        ``(H, W)`` float32 in [0, 1]; 0 where alpha is 0; max 1 unless all zero.
    """
    import cv2

    size = cam.shape[0]
    nh, nw = fit_size(shape, size)
    top, left = (size - nh) // 2, (size - nw) // 2
    crop = np.ascontiguousarray(cam[top:top + nh, left:left + nw], np.float32)
    out = cv2.resize(crop, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    out = np.maximum(out, 0)
    if alpha is not None:
        out = out * (alpha.astype(np.float32) / 255.0)
    peak = float(out.max())
    return (out / peak if peak > 0 else out).astype(np.float32)


def cam_map(model: nn.Module, path: Path, meta: dict, target, device: str = "cpu",
            layers: tuple[list[nn.Module], Callable | None] | None = None
            ) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """One Grad-CAM map of ``model`` (ending in the backbone or the probe) for one image.

    Args:
        model: ``(1, C, S, S) -> (1, D | K)``; its backbone must be reachable for the target
            layer (``model[0]`` of a ``Sequential``, or the model itself).
        target: a callable on the model's output (:class:`ClassTarget`, :class:`SimilarityTarget`);
            None: the highest output (the predicted class).
        layers: :func:`target_layers` result (default: chosen from the backbone).

    Returns:
        ``(map (H, W) float32 in [0, 1], rgba (H, W, 4) uint8, output (D | K,))``.
    """
    backbone = model[0] if isinstance(model, nn.Sequential) else model
    layers, reshape = layers or target_layers(backbone)
    x, rgba = model_input(path, meta)
    try:
        maps, output = _grad_cam(model.to(device), layers, reshape, x.to(device), target, fast=True)
    except RuntimeError:  # an in-place operation right after the layer: weights' gradients too
        maps, output = _grad_cam(model, layers, reshape, x.to(device), target, fast=False)
    alpha = rgba[..., 3] if (rgba[..., 3] < 255).any() else None
    return to_image(maps[0], rgba.shape[:2], alpha), rgba, output


def _grad_cam(model: nn.Module, layers: list[nn.Module], reshape: Callable | None, x: torch.Tensor,
              target, fast: bool) -> tuple[np.ndarray, torch.Tensor]:
    """``pytorch_grad_cam.GradCAM`` on ``x`` ``(1, C, S, S)``: ``(maps (1, S, S), output)``.

    ``fast``: the graph starts at the target layer (frozen weights, its output made to require
    gradients), so the backward pass stops there: ~3x faster on a CPU than a full backward.
    """
    from pytorch_grad_cam import GradCAM

    model = model.eval().requires_grad_(not fast)

    def track(module, inputs, output):
        return output.detach().requires_grad_(True)

    hooks = [layer.register_forward_hook(track, prepend=True) for layer in layers] if fast else []
    try:
        with GradCAM(model=model, target_layers=layers, reshape_transform=reshape) as cam:
            maps = cam(input_tensor=x, targets=None if target is None else [target])
            return maps, cam.outputs[0].detach().cpu()
    finally:
        for hook in hooks:
            hook.remove()


def pick_specimens(labels: Sequence[str], n: int, seed: int = 0,
                   prefer: np.ndarray | None = None) -> np.ndarray:
    """``n`` rows taking turns over the classes (seeded), preferred rows (validation) first."""
    from .neighbours import class_orders

    queues = [list(order) for order in class_orders(labels, seed, prefer)]
    out = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(int(q.pop(0)))
    return np.asarray(out, int)


NO_ALPHA = ("\nno transparency in this photo: the background is not masked out and can draw the "
            "heat;\nrun stage 0 first (0-segmentation/segment.py; --method threshold for plain "
            "backgrounds)")


def transparency_note(rgba: np.ndarray) -> str:
    """The title line of a photo without transparency (``(H, W, 4)`` uint8), else ''."""
    return NO_ALPHA if (rgba[..., 3] == 255).all() else ""


def plot_cams(rgba: np.ndarray, panels: Sequence[tuple[str, np.ndarray | None, np.ndarray]],
              path: Path, title: str) -> Path:
    """A row of panels: ``(caption, heat map (H, W) or None, rgba image)`` each."""

    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.1 * len(panels), 3.4), layout="constrained")
    for ax, (caption, heat, image) in zip(np.atleast_1d(axes), panels):
        a = image[..., 3:].astype(np.float32) / 255
        shown = image[..., :3] * a + 255 * (1 - a)  # specimen on white
        ax.imshow(shown.astype(np.uint8))
        if heat is not None:  # colour where the map is high; low influence leaves the image as is
            ax.imshow(heat, cmap="jet", vmin=0, vmax=1, alpha=np.clip(heat, 0, 0.7) * a[..., 0],
                      interpolation="bilinear")
        ax.set_title(caption, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.colorbar(plt.cm.ScalarMappable(cmap="jet"), ax=list(np.atleast_1d(axes)), shrink=0.6,
                 label="influence (0-1)", pad=0.01)
    save_figure(fig, path)
    return Path(path)


def write_gradcam(backbone: nn.Module, meta: dict, features: np.ndarray, labels: Sequence[str],
                  images: Sequence[Path], train: np.ndarray, val: np.ndarray, probe_c: float,
                  out_dir: Path, n: int, seed: int = 0, device: str = "cpu") -> list[Path]:
    """Grad-CAM figures of ``n`` specimens (validation first, classes in turn) into ``out_dir``.

    Args:
        backbone: the run's frozen backbone, ``(B, C, S, S) -> (B, D)``.
        meta: its model metadata (input size, bands, normalisation).
        features: ``(N, D)`` the run's stored embeddings of ``images``.
        labels: ``(N,)`` class per image; train, val: ``(N,)`` bool masks of the probe's split.
        probe_c: the probe's regularisation strength (evaluation.csv's ``probe_C``).
        out_dir: folder for ``<k>_<image stem>.png`` (one figure per specimen).

    Returns:
        The figures written.
    """
    from .neighbours import cosine_neighbours

    labels = np.asarray(list(map(str, labels)))
    head = ProbeHead(fit_probe(np.asarray(features)[train], labels[train], probe_c))
    classifier = nn.Sequential(backbone, head)
    layers = target_layers(backbone)
    rows = pick_specimens(labels, n, seed, prefer=val)
    if len(rows) == 0:
        return []
    nearest, dist = cosine_neighbours(features, rows, 1)
    written = []
    for k, (row, nb, d) in enumerate(zip(rows, nearest[:, 0], dist[:, 0])):
        # target None: grad-cam explains the highest logit, i.e. the predicted class
        class_map, rgba, logits = cam_map(classifier, images[row], meta, None, device, layers)
        pred = int(logits.argmax())
        p = float(torch.softmax(logits.float(), 0)[pred])
        sim_map, _, _ = cam_map(backbone, images[row], meta, SimilarityTarget(features[nb]), device,
                                layers)
        neighbour = read_rgba(images[nb], display_bands(meta), meta.get("scale16", "full"))
        name = Path(str(images[row])).stem
        path = Path(out_dir) / fit_name(f"{k + 1:02d}_{name}.png")
        flat = ("\nno colour = a flat map (at this input size the layer has too few cells)"
                if class_map.max() == 0 or sim_map.max() == 0 else "")
        flat += transparency_note(rgba)
        plot_cams(rgba, [
            (f"{name}\nclass {labels[row] or '-'}", None, rgba),
            (f"probe predicts {head.classes[pred]} (p {p:.2f})\nwhat drives that class", class_map, rgba),
            (f"likeness to its nearest neighbour\n(cosine distance {d:.3f})", sim_map, rgba),
            (f"nearest neighbour: {Path(str(images[nb])).stem}\nclass {labels[nb] or '-'}", None,
             neighbour)], path, f"Grad-CAM on {layer_name(backbone, layers[0][0])}: red = most "
                                f"influence{flat}")
        written.append(path)
    return written
