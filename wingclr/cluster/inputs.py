"""What stage 1 accepts: the input folder, an existing output, and random features.

Random (untrained) features group images by colour and pose, not by pattern, yet UMAP still
separates them into convincing clusters with a high silhouette; ``--pretrained none`` is refused
unless ``--allow-random-features`` is given too, and missing ImageNet weights point to the fetch
command and to the by-hand route (your own group folders straight into stage 2).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import outputs
from ..cli import UserError, require_folder
from ..identity import input_changes
from ..outputs import check_finished, read_manifest
from ..weights import instead
from .settings import ClusterSettings

BY_HAND = ("or sort the photos into one folder per group yourself and give their parent folder to "
           "2-create_dataset/create_dataset.py --input")


def random_features_warning(backbone: str) -> str:
    return (f"WARNING: random (untrained) {backbone} features: they group images by colour and "
            "pose, not by pattern, so these clusters and silhouettes mean nothing; get the ImageNet "
            f"weights (python -m wingclr.weights fetch {backbone}) {BY_HAND}")


def check_random_features(*, pretrained: str, allow_random_features: bool, backbone: str) -> bool:
    """True when the features will be random; refuses that unless ``--allow-random-features``.

    Raises:
        UserError: ``--pretrained none`` without ``--allow-random-features``.
    """
    if pretrained != "none":
        return False
    if not allow_random_features:
        from ..models import installed_backbones

        installed = instead("--pretrained imagenet --backbone", installed_backbones())
        raise UserError(f"--pretrained none clusters random (untrained) {backbone} features, "
                        "which group images by colour and pose rather than pattern and still give "
                        f"a convincing silhouette; {installed}get the ImageNet weights (`python -m "
                        f"wingclr.weights fetch {backbone}` on a machine with internet, see "
                        f"weights/README.md), {BY_HAND}; add --allow-random-features only to "
                        "test the pipeline")
    return True


RANDOM_ADVICE = ("or pass --pretrained none --allow-random-features to test the pipeline on "
                 "random features")


def with_weights_advice(build):
    """``build`` whose missing-weights error names what stage 1 accepts (random features only
    with ``--allow-random-features``) and the by-hand route of stage 2."""
    from ..models import build_backbone

    extra = {"advice": RANDOM_ADVICE} if build is build_backbone else {}

    def wrapped(*args, **kwargs):
        try:
            return build(*args, **kwargs, **extra)
        except UserError as e:
            raise UserError(f"{e}; {BY_HAND}") from None
    return wrapped


def stage_settings(s: ClusterSettings) -> dict:
    """The settings that define the output (stored in manifest.json, compared on re-runs)."""
    return outputs.recorded_settings(s, "1-clustering")


def guard_output(out: Path, s: ClusterSettings, *, mode: str) -> bool:
    """True when the same finished clustering is already in ``out`` (skip).

    Raises:
        UserError: a finished clustering with other settings is there and no ``--overwrite``.
    """
    if mode == "batch":
        return check_finished(out, stage_settings(s), s.overwrite, "clustering")
    manifest = read_manifest(out)
    if manifest is None or s.overwrite:
        return False
    old, new = manifest.get("args", {}), stage_settings(s)
    feature_keys = [k for k in new if k not in ("min_cluster_size", "cluster_selection_epsilon",
                                                "min_samples", "link")]
    if mode == "sweep-only" and all(old.get(k) == new[k] for k in feature_keys):
        return False  # a sweep only reads the finished output's caches
    raise UserError(f"{out} already holds a finished clustering (manifest.json); pass --overwrite "
                    "to cluster again, or choose another --output")


def input_changed_error(out: Path, stamps: pd.DataFrame) -> UserError | None:
    """The refusal to skip a finished clustering whose input images changed since (None: same).

    Compared with the ``inputs.csv`` the clustering recorded; an output finished before that
    file existed is compared by the images its ``clusters.csv`` and manifest list.
    """
    changes = input_changes(out, stamps, "clusters.csv")
    if not changes:
        return None
    return UserError(f"{out}: input changed since this clustering ({changes}; {changes.examples()}); "
                     "re-run with --overwrite to redo it (features of unchanged images come from "
                     "the cache; stage 1 has no --update: the clusters are drawn again for all)")


def resolve_input(path: Path, out: Path) -> Path:
    """The image folder; stage 0's output folder is accepted for its ``images/``."""
    path = Path(path)
    require_folder(path, "input folder", "run 0-segmentation/segment.py first or pass --input "
                   "with your image folder")
    if (path / "images").is_dir() and (path / "masks").is_dir():
        path = path / "images"  # stage 0 root given: cluster its cut-out images, not the masks
    inp, outp = path.resolve(), Path(out).resolve()
    if outp == inp or inp in outp.parents or outp in inp.parents:
        raise UserError(f"--output {out} and --input {path} overlap; choose an output folder "
                        "outside the image folder")
    return path
