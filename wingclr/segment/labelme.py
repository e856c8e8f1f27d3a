"""Labelme annotations (one ``.json`` per photo, common among biologists) for ``train_maskrcnn.py``.

A labelme file holds ``shapes`` (``label``, ``points`` as ``[x, y]`` pairs, ``shape_type``),
``imagePath`` (relative to the JSON file), ``imageHeight`` and ``imageWidth``. Label names are the
classes; ``polygon`` shapes (and ``rectangle``, ``circle``) are rasterised exactly like COCO
polygons (:func:`~wingclr.segment.annotations.decode_segmentation`), so a labelme set and its
``labelme2coco`` export train the same model. Several shapes of one label in a photo are merged.

The photo of ``<folder>/<rel>.json`` is found as ``imagePath`` next to the JSON file, else as
``<images>/<rel's folder>/<imagePath's name>``, else as ``<images>/<rel>.<any image extension>``.
An absolute ``imagePath``, or one whose ``..`` leads outside ``<images>``, is refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from ..cli import UserError
from ..imageio import IMAGE_EXTENSIONS
from ..untrusted import is_relative, path_inside
from .annotations import Annotated

SHAPES = ("polygon", "rectangle", "circle")


def is_labelme_folder(path: Path | str) -> bool:
    """True for a folder holding ``.json`` files (labelme), False for a COCO ``.json`` file."""
    return Path(path).is_dir()


def shape_polygon(shape: dict) -> list[float] | None:
    """A labelme shape as a flat COCO polygon ``[x0, y0, x1, y1, ...]``; None if unsupported."""
    kind = shape.get("shape_type") or "polygon"
    pts = [(float(x), float(y)) for x, y in shape.get("points", [])]
    if kind == "polygon" and len(pts) >= 3:
        return [v for p in pts for v in p]
    if kind == "rectangle" and len(pts) == 2:
        (x0, y0), (x1, y1) = pts
        return [x0, y0, x1, y0, x1, y1, x0, y1]
    if kind == "circle" and len(pts) == 2:
        (cx, cy), (px, py) = pts
        r = math.hypot(px - cx, py - cy)
        return [v for a in range(0, 360, 10) for v in (cx + r * math.cos(math.radians(a)),
                                                       cy + r * math.sin(math.radians(a)))]
    return None


def _find_image(json_path: Path, rel: Path, images_root: Path, image_path: str) -> Path | None:
    candidates = []
    if image_path:
        name = Path(image_path.replace("\\", "/"))
        if ".." in name.parts or not is_relative(image_path):  # must end inside --images
            near = path_inside(images_root, image_path, source=json_path, entry="imagePath",
                               base=json_path.parent)
        else:
            near = json_path.parent / name  # beside the JSON file, in the --annotations folder
        candidates += [near, images_root / rel.parent / name.name]
    candidates += [images_root / rel.with_suffix(ext) for ext in sorted(IMAGE_EXTENSIONS)]
    found = next((c for c in candidates if c.is_file()), None)
    return found.resolve() if found else None


def _image_size(data: dict, image: Path) -> tuple[int, int]:
    if data.get("imageHeight") and data.get("imageWidth"):
        return int(data["imageHeight"]), int(data["imageWidth"])
    from PIL import Image, ImageOps

    with Image.open(image) as img:
        w, h = ImageOps.exif_transpose(img).size
    return h, w


def load_labelme(folder: Path | str, images_root: Path | str,
                 classes: Sequence[str] | None = None) -> tuple[list[str], list[Annotated], list]:
    """Read a folder of labelme JSON files (searched recursively).

    Args:
        folder: the folder of ``.json`` files (may be the photos folder itself).
        images_root: the ``--images`` folder.
        classes: expected class names in label order (``--classes`` or a checkpoint's); every
            label must be one of them. Default: the labels found, sorted.

    Returns:
        ``(classes, items, skipped)``; ``skipped`` lists ``(json file, reason)``.

    Raises:
        UserError: no labelme file, or labels outside ``classes``.
    """
    folder, root = Path(folder), Path(images_root)
    files = sorted(p for p in folder.rglob("*.json") if p.is_file())
    parsed, skipped, labels = [], [], {}
    for path in files:
        rel = path.relative_to(folder)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            shapes = data["shapes"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            skipped.append((rel.as_posix(), f"not a labelme file ({type(e).__name__})"))
            continue
        polys = [(s.get("label", ""), shape_polygon(s)) for s in shapes]
        bad = sorted({s.get("shape_type", "?") for s, (_, p) in zip(shapes, polys) if p is None})
        polys = [(label, p) for label, p in polys if p is not None]
        if not polys:
            skipped.append((rel.as_posix(), "no polygon" + (f" ({', '.join(bad)} shapes are not "
                                                            "used)" if bad else "")))
            continue
        image = _find_image(path, rel, root, data.get("imagePath", ""))
        if image is None:
            skipped.append((rel.as_posix(), f"its photo {data.get('imagePath', '')!r} is not in "
                                            f"{path.parent} nor {root}"))
            continue
        for label, _ in polys:
            labels.setdefault(label, path)
        parsed.append((path, image, data, polys))
    if not parsed:
        raise UserError(f"no usable labelme .json file in {folder}" + (
            f" ({skipped[0][0]}: {skipped[0][1]})" if skipped else "") +
            "; pass the folder of labelme files with --annotations and the photos with --images")
    names = list(classes) if classes else sorted(labels)
    unknown = [label for label in labels if label not in names]
    if unknown:
        raise UserError(f"labelme labels {', '.join(repr(u) for u in unknown)} (e.g. in "
                        f"{labels[unknown[0]]}) are not among the classes ({', '.join(names)}); "
                        "pass --classes naming every label, or rename them in labelme")
    items = []
    for path, image, data, polys in parsed:
        try:
            rel = image.relative_to(root.resolve()).as_posix()
        except ValueError:
            rel = image.name
        coco = tuple((names.index(label) + 1, [poly]) for label, poly in polys)
        items.append(Annotated(image, rel, coco=coco, size=_image_size(data, image)))
    return names, items, skipped
