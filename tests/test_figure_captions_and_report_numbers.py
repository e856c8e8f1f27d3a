"""Captions cut in the middle keeping the end, near-square sheets of few tiles,
titles wrapped at spaces, and numbers with the same decimals in summary.txt and report.html."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image, ImageFont

from wingclr.thumbnails import grid_columns, middle_clip, short_name, wrap


def test_long_names_lose_their_middle_and_keep_their_end():
    name = "H.erato.demophoon_1982_0417.jpg"
    cut = middle_clip(name, 18)
    assert len(cut) == 18 and "…" in cut and cut == "H.era…982_0417.jpg"
    assert middle_clip("short.png", 18) == "short.png"
    assert short_name("drawer/H.erato.demophoon_1982_0417.png").endswith("_1982_0417")
    from wingclr.segment.sheet import TILE, fit_caption

    font = ImageFont.load_default()
    caption = fit_caption(name, font, TILE - 4)
    assert font.getlength(caption) <= TILE - 4 and caption.endswith(".jpg") and "…" in caption
    assert caption.endswith(name[-len(caption.split("…")[1]):])


def test_few_tiles_make_a_near_square_sheet(tmp_path):
    from wingclr.segment.sheet import CAPTION, TILE, write_contact_sheets

    assert [grid_columns(n, 20) for n in (1, 4, 14, 200, 400)] == [1, 2, 4, 15, 20]
    assert grid_columns(2, 8, least=4) == 4
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(14):
        Image.new("RGBA", (40, 30), (0, 0, 0, 255)).save(tmp_path / "images" / f"p{i}.png")
        rows.append({"image": f"p{i}.jpg", "output": f"p{i}.png", "status": "ok"})
    sheet = write_contact_sheets(tmp_path, rows, tmp_path)[0]
    with Image.open(sheet) as img:
        assert img.size == (4 * TILE, 4 * (TILE + CAPTION))  # 4 x 4, not a strip of 14


def test_titles_wrap_at_spaces_only():
    title = "simclr_bs_256_nepochs_300_temp_0.5_long_run_name: nearest neighbours of 12 specimens"
    lines = wrap(title, 200).split("\n")
    assert lines[0] == "simclr_bs_256_nepochs_300_temp_0.5_long_run_name:"  # whole, never cut
    assert all(word in title.split() for line in lines for word in line.split())


def test_neighbours_title_counts_one_specimen_in_the_singular():
    from wingclr.evaluate.visuals import neighbours_title

    assert "of 1 specimen (" in neighbours_title("run", 1)
    assert "of 3 specimens (" in neighbours_title("run", 3)


def test_summary_and_report_show_every_score_with_three_decimals():
    from wingclr.evaluate.gridplot import summary_table
    from wingclr.evaluate.report import _fmt

    table = pd.DataFrame([{"run": "a", "batch_size": 64, "epochs": 10, "temperature": 0.5,
                           "accuracy": 1.0, "balanced_accuracy": 0.983, "knn_accuracy": 0.9,
                           "silhouette": 0.25, "davies_bouldin": 1.0}])
    text = summary_table(table)
    assert "1.000" in text and "0.983" in text and "0.900" in text
    row = text.splitlines()[1].split()
    assert row[1:4] == ["64", "10", "0.5"]
    assert _fmt("0.862069", "precision") == "0.862" and _fmt("7", "support") == "7"
    assert _fmt("12", "class") == "12" and _fmt(0.781, "accuracy") == "0.781"


def test_class_table_with_an_empty_cell_keeps_three_decimals(tmp_path):
    from wingclr.evaluate.report import class_table

    path = tmp_path / "report.csv"
    pd.DataFrame({"class": ["a", "b", "accuracy", "macro avg"],
                  "precision": [0.862069, 0.75, np.nan, 0.806],
                  "recall": [0.9, 0.7, np.nan, 0.8], "f1-score": [0.88, 0.72, 0.81, 0.8],
                  "support": [29, 20, 49, 49]}).to_csv(path, index=False)
    html = class_table(path)
    assert "0.862069" not in html and "0.862" in html and "0.781" not in html


def test_gradcam_title_tells_to_run_stage_0_on_photos_without_transparency():
    from wingclr.evaluate.gradcam import transparency_note

    opaque = np.full((8, 8, 4), 255, np.uint8)
    assert "run stage 0 first" in transparency_note(opaque)
    cut_out = opaque.copy()
    cut_out[0, 0, 3] = 0
    assert transparency_note(cut_out) == ""
