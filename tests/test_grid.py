"""Stage 3 grids: user grids (CSV, value lists, fixed axes), --list-grid, batch clamped to the data."""

import json

import pytest

from conftest import TINY_TRAIN, load_stage, run_stage
from wingclr.cli import UserError
from wingclr.train.grid import GRID, clamp_to_data, largest_batch
from wingclr.outputs import recorded_settings
from wingclr.train.recipes import resolve
from wingclr.train.settings import TrainSettings

SCRIPT = "3-training/train.py"
_B = TINY_TRAIN.index("--batch-size")
TINY = TINY_TRAIN[:_B] + TINY_TRAIN[_B + 2:]  # the batch size comes from the grid


def resolved(*argv):
    args = load_stage(SCRIPT).get_args_parser().parse_args([str(a) for a in argv])
    return resolve(TrainSettings.from_args(args))


def test_value_lists_are_the_product_batch_slowest():
    args, grid = resolved("--batch-sizes", "32,64", "--epoch-list", "5", "--temperatures", "0.1,0.5",
                          "--param-i", "3")
    assert grid == [(32, 5, 0.1), (32, 5, 0.5), (64, 5, 0.1), (64, 5, 0.5)]
    assert (args.batch_size, args.epochs, args.temperature) == (64, 5, 0.1)


def test_a_single_flag_fixes_its_axis_and_the_other_axes_keep_the_default_grid():
    args, grid = resolved("--batch-size", "8", "--param-i", "9")
    assert (args.batch_size, args.epochs, args.temperature) == (8, 300, 0.8)
    assert grid is None  # a batch size the user fixed is never clamped
    args, grid = resolved("--temperature", "0.2", "--param-i", "9")
    assert len(grid) == 9 and {t for _, _, t in grid} == {0.2}
    assert (args.batch_size, args.epochs, args.temperature) == (256, 300, 0.2)


def test_a_typed_value_equal_to_the_default_still_fixes_its_axis_and_help_shows_the_defaults():
    s, grid = resolved("--batch-size", "256", "--param-i", "2")
    assert (s.batch_size, s.epochs, s.temperature) == (256, 50, 0.5) and grid is None
    s, grid = resolved("--param-i", "2")  # the default 256 is not typed: the grid's batch 64
    assert (s.batch_size, s.epochs, s.temperature) == (64, 50, 0.5) and len(grid) == 27
    assert s.given == frozenset() and resolved("--epochs", "300")[0].given == {"epochs"}
    text = " ".join(load_stage(SCRIPT).get_args_parser().format_help().split())
    for default in ("fixes that axis (default: 256)", "epochs (default: 300)", "temperature (default: 0.5)"):
        assert default in text


def test_csv_rows_take_missing_columns_from_flags_or_defaults(tmp_path):
    csv = tmp_path / "grid.csv"
    csv.write_text("batch_size,temperature\n32,0.1\n\n16,0.3\n")
    _, grid = resolved("--grid", csv, "--param-i", "1")
    assert grid == [(32, 300, 0.1), (16, 300, 0.3)]
    _, grid = resolved("--grid", csv, "--epoch-list", "5,10", "--param-i", "4")
    assert grid == [(32, 5, 0.1), (32, 10, 0.1), (16, 5, 0.3), (16, 10, 0.3)]
    args, _ = resolved("--grid", csv, "--epochs", "7", "--param-i", "2")
    assert (args.batch_size, args.epochs, args.temperature) == (16, 7, 0.3)
    assert not {"grid", "batch_sizes", "epoch_list", "temperatures"} & set(recorded_settings(args, "3-training"))


@pytest.mark.parametrize("text,argv,needle", [
    ("batch_size\n32\n", ("--batch-size", "8"), "has a batch_size column; drop --batch-size"),
    ("batch_size,lr\n32,1\n", (), "unknown column(s) lr"),
    ("epochs\n5\nfive\n", (), "line 3"),
    ("epochs\n5\n5\n", (), "grid points 1 and 2 are the same"),
    ("temperature\n0\n", (), "temperature must be between 0.01 and 10 (got 0)"),
    ("epochs\n", (), "has no rows"),
])
def test_bad_grids_are_one_line_errors_naming_the_file(tmp_path, text, argv, needle):
    csv = tmp_path / "grid.csv"
    csv.write_text(text)
    with pytest.raises(UserError) as e:
        resolved("--grid", csv, *argv, "--param-i", "1")
    assert needle in str(e.value) and "\n" not in str(e.value)
    if "column" in needle or "line" in needle or "rows" in needle:
        assert str(csv) in str(e.value)


def test_grid_flags_without_param_i_and_conflicting_axes_are_refused(tmp_path):
    with pytest.raises(UserError, match="--epoch-list lists a grid: pick one point with --param-i"):
        resolved("--epoch-list", "5,10")
    with pytest.raises(UserError, match="--batch-size fixes the axis that --batch-sizes lists"):
        resolved("--batch-size", "8", "--batch-sizes", "8,16", "--param-i", "1")


def test_list_grid_prints_the_user_grid_and_the_array_to_submit(capsys):
    run_stage(SCRIPT, "--list-grid", "--batch-sizes", "32,64", "--temperatures", "0.1,0.5")
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if "simclr_bs_" in line]
    assert len(rows) == 12 and rows[11][:4] == ["12", "64", "300", "0.5"]
    assert "sbatch --array=1-12 3-training/grid.sbatch" in out
    with pytest.raises(UserError, match="--param-i must be between 1 and 12"):
        resolved("--batch-sizes", "32,64", "--temperatures", "0.1,0.5", "--param-i", "13")


def test_clamp_goes_to_the_largest_power_of_two_and_names_the_point_that_covers_it():
    assert [largest_batch(n) for n in (1, 2, 30, 200, 256)] == [1, 2, 16, 128, 256]
    assert clamp_to_data(GRID, 27, 200) == ((128, 300, 0.8), 18)  # point 18 trains batch 128
    assert clamp_to_data(GRID, 18, 200) == ((128, 300, 0.8), None)
    assert clamp_to_data(GRID, 26, 300) == ((256, 300, 0.5), None)
    # no unclamped owner: the lowest-numbered point trains it, the other one is skipped
    grid = [(512, 5, 0.5), (256, 5, 0.5)]
    assert clamp_to_data(grid, 1, 200) == ((128, 5, 0.5), None)
    assert clamp_to_data(grid, 2, 200) == ((128, 5, 0.5), 1)


def test_point_larger_than_the_data_is_clamped_and_records_both_sizes(dataset_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    grid = ("--batch-sizes", "64", "--epoch-list", "1", "--temperatures", "0.5")
    run_stage(SCRIPT, "--data", dataset_dir, "--output", out, *grid, "--param-i", "1", *TINY)
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: grid point 1")]
    assert len(notes) == 1 and "batch 64 > the 30 training images" in notes[0] and "using batch 16" in notes[0]
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == ["simclr_bs_16_nepochs_1_temp_0.5"]
    manifest = json.loads((out / "simclr_bs_16_nepochs_1_temp_0.5" / "manifest.json").read_text())
    assert (manifest["args"]["batch_size"], manifest["args"]["batch_size_requested"]) == (16, 64)


def test_point_clamped_onto_another_point_is_skipped_with_exit_0(dataset_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    grid = ("--batch-sizes", "16,64", "--epoch-list", "1", "--temperatures", "0.5")
    assert run_stage(SCRIPT, "--data", dataset_dir, "--output", out, *grid, "--param-i", "2", *TINY) is None
    skips = [line for line in capsys.readouterr().out.splitlines() if line.startswith("skip:")]
    assert len(skips) == 1 and "grid point 1 (simclr_bs_16_nepochs_1_temp_0.5) covers" in skips[0]
    assert not out.exists() or not any(out.iterdir())


def test_fixed_batch_larger_than_the_data_is_still_an_error(dataset_dir, tmp_path):
    with pytest.raises(UserError, match="fewer than --batch-size 64"):
        run_stage(SCRIPT, "--data", dataset_dir, "--output", tmp_path / "runs", "--param-i", "1",
                  "--epochs", "1", "--temperature", "0.5", *TINY, "--batch-size", "64")
