"""Contact sheets of stage 0: every photo's cut-out as a thumbnail, so a person checks 200 in one look.

``contact_sheet.png`` (then ``contact_sheet_2.png``, ...) holds up to :data:`PER_SHEET` tiles in
rows of at most :data:`COLUMNS` (fewer tiles: a near-square grid), each a cut-out on a
checkerboard (transparent = background) with its file name below (cut in the middle when long). Photos that need a look come first, framed red with their status: implausible
coverage (the cut-out from ``rejected/``), no wings found and failures (the photo itself, or an
empty tile when it cannot be read). At most :data:`MAX_SHEETS` sheets are written; for larger sets
the last one says how many ``ok`` photos were left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..imageio import quiet_decoders
from ..outputs import atomic_path
from ..thumbnails import grid_columns, middle_clip

TILE, CAPTION, COLUMNS, PER_SHEET, MAX_SHEETS = 96, 14, 20, 200, 5
SHEET_GLOB = "contact_sheet*.png"
RED, GREY = (220, 0, 0), (150, 150, 150)


def sheet_name(i: int) -> str:
    return "contact_sheet.png" if i == 0 else f"contact_sheet_{i + 1}.png"


def checkerboard(size: int, square: int = 8) -> Image.Image:
    """``size`` x ``size`` RGB checkerboard of light greys."""
    yy, xx = np.mgrid[0:size, 0:size] // square
    board = np.where(((yy + xx) % 2)[..., None] == 0, 235, 200).astype(np.uint8)
    return Image.fromarray(np.repeat(board, 3, axis=2))


def _thumbnail(path: Path | None) -> Image.Image | None:
    """An RGBA thumbnail fitting the tile, or None when there is nothing readable."""
    if path is None or not path.is_file():
        return None
    quiet_decoders()  # a damaged photo is an empty tile, listed unreadable elsewhere
    try:
        with Image.open(path) as img:
            img.draft("RGB", (TILE, TILE))  # JPEG photos decode at a reduced size
            img.thumbnail((TILE - 6, TILE - 6))
            return img.convert("RGBA")
    except Exception:  # noqa: BLE001 - e.g. a TIFF stack PIL cannot show: an empty tile
        return None


def tile(thumb: Image.Image | None, caption: str, status: str) -> Image.Image:
    """One tile: thumbnail on a checkerboard, red frame and status unless ``ok``, caption below."""
    out = Image.new("RGB", (TILE, TILE + CAPTION), "white")
    out.paste(checkerboard(TILE), (0, 0))
    if thumb is not None:
        out.paste(thumb, ((TILE - thumb.width) // 2, (TILE - thumb.height) // 2), thumb)
    draw, font = ImageDraw.Draw(out), ImageFont.load_default()
    flagged = status != "ok"
    draw.rectangle([0, 0, TILE - 1, TILE - 1], outline=RED if flagged else GREY,
                   width=3 if flagged else 1)
    if flagged:
        draw.text((4, 4), status, fill=RED, font=font)
    draw.text((2, TILE + 1), fit_caption(caption, font, TILE - 4), fill=(0, 0, 0), font=font)
    return out


def fit_caption(caption: str, font, width_px: int) -> str:
    """``caption`` with characters taken out of its middle (an ellipsis instead) until it fits."""

    chars = len(caption)
    while chars > 4 and font.getlength(middle_clip(caption, chars)) > width_px:
        chars -= 1
    return middle_clip(caption, chars)


def _source(row: dict, out: Path, photos: Path, rejected: str) -> Path | None:
    if row["status"] == "ok":
        return out / "images" / row["output"]
    if row.get("output"):
        return out / rejected / "images" / row["output"]
    return photos / row["image"]


def write_contact_sheets(out: Path, rows: Sequence[dict], photos: Path,
                         rejected: str = "rejected") -> list[Path]:
    """Write the contact sheets of a stage 0 output (old sheets are replaced).

    Args:
        out: stage 0 output folder.
        rows: ``segmentation.csv`` rows (image, output, status).
        photos: the input photos folder (photos without a cut-out are shown as they are).
        rejected: subfolder of the flagged cut-outs.

    Returns:
        The sheets written, in order.
    """

    for old in out.glob(SHEET_GLOB):
        old.unlink()
    ordered = sorted(rows, key=lambda r: r["status"] == "ok")  # stable: names stay in order
    shown, left_out = ordered[:PER_SHEET * MAX_SHEETS], len(ordered) - PER_SHEET * MAX_SHEETS
    sheets = []
    cols = grid_columns(len(shown[:PER_SHEET]), COLUMNS)  # few tiles: near-square, not a strip
    for i in range(0, len(shown), PER_SHEET):
        part = shown[i:i + PER_SHEET]
        n_rows = -(-len(part) // cols)
        footer = CAPTION + 4 if left_out > 0 and i + PER_SHEET >= len(shown) else 0
        sheet = Image.new("RGB", (min(len(part), cols) * TILE, n_rows * (TILE + CAPTION) + footer),
                          "white")
        for j, row in enumerate(part):
            thumb = _thumbnail(_source(row, out, photos, rejected))
            sheet.paste(tile(thumb, Path(row["image"]).name, row["status"]),
                        ((j % cols) * TILE, (j // cols) * (TILE + CAPTION)))
        if footer:
            ImageDraw.Draw(sheet).text((4, sheet.height - footer + 2), f"+{left_out} more photos "
                                       "not shown (see segmentation.csv)", fill=(0, 0, 0))
        path = out / sheet_name(len(sheets))
        with atomic_path(path) as tmp:
            sheet.save(tmp, format="PNG")
        sheets.append(path)
    return sheets
