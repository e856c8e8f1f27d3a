"""Stage settings: one frozen object per stage instead of the argparse Namespace between modules.

The manifest's "args" must be what the Namespace gave before (same keys, order and values), so
finished outputs made by earlier versions are still recognised as finished.
"""

import argparse
import ast
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, load_stage
from wingclr import cli, flags
from wingclr.outputs import recorded_settings

STAGES = [  # script, manifest stage, settings class, a command line
    ("0-segmentation/segment.py", "0-segmentation", "wingclr.segment.settings.SegmentSettings",
     ["--method", "threshold", "--background", "0,0,0"]),
    ("0-segmentation/train_maskrcnn.py", "0-train-maskrcnn", "wingclr.segment.settings.MaskRCNNSettings",
     ["--images", "photos", "--masks", "masks"]),
    ("1-clustering/cluster.py", "1-clustering", "wingclr.cluster.settings.ClusterSettings",
     ["--min-cluster-size", "5", "--cluster-selection-epsilon", "0.2"]),
    ("2-create_dataset/create_dataset.py", "2-create_dataset", "wingclr.dataset.DatasetSettings",
     ["--val-fraction", "0.3"]),
    ("3-training/train.py", "3-training", "wingclr.train.settings.TrainSettings",
     ["--band-group", "uv=3", "--bands", "0,1,2,3", "--epochs", "5"]),
    ("4-embed/embed.py", "4-embed", "wingclr.embed.settings.EmbedSettings",
     ["--checkpoints", "a.ckpt", "b", "--num-workers", "0"]),
    ("5-evaluation/evaluate.py", "5-evaluation", "wingclr.evaluate.settings.EvalSettings",
     ["--runs", "a", "b", "--query", "x.png"]),
]


def settings_class(dotted: str):
    module, name = dotted.rsplit(".", 1)
    return getattr(__import__(module, fromlist=[name]), name)


@pytest.mark.parametrize("script,stage,cls,argv", STAGES, ids=[s[0].split("/")[1] for s in STAGES])
def test_each_stage_settings_record_exactly_what_its_namespace_recorded(script, stage, cls, argv):
    args = load_stage(script).get_args_parser().parse_args(argv)
    s = settings_class(cls).from_args(args)
    flags = {k: v for k, v in vars(args).items() if k != "given"}  # cli.Given's note, not a flag
    assert json.dumps(recorded_settings(s, stage)) == json.dumps(recorded_settings(flags, stage))  # keys, order, values
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 1
    assert not any(isinstance(v, list) for v in s.as_dict().values())  # frozen all the way down


@dataclass(frozen=True, kw_only=True)
class Tiny(cli.Settings):
    size: int
    names: tuple[str, ...]


def tiny_parser(extra: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=4, action=cli.Given)
    p.add_argument("--names", nargs="*", default=["a"])
    if extra:
        p.add_argument("--new-flag", default=1)
    return p


def test_a_flag_added_to_the_parser_or_the_class_only_is_a_type_error():
    with pytest.raises(TypeError, match=r"only in the parser \['new_flag'\]"):
        Tiny.from_args(tiny_parser(extra=True).parse_args([]))
    with pytest.raises(TypeError, match=r"only in the class \['names'\]"):
        Tiny.from_args(argparse.Namespace(size=1))


def test_given_counts_typed_flags_even_at_their_default_and_is_never_recorded():
    assert Tiny.from_args(tiny_parser().parse_args([])).given == frozenset()
    s = Tiny.from_args(tiny_parser().parse_args(["--size", "4", "--names", "b", "c"]))
    assert (s.size, s.names, s.given) == (4, ("b", "c"), {"size"})
    assert s.as_dict() == {"size": 4, "names": ("b", "c")}
    assert recorded_settings(s, "any") == {"size": 4, "names": ["b", "c"]}


def test_from_args_changes_replace_a_flag_value_and_lists_still_become_tuples():
    s = Tiny.from_args(tiny_parser().parse_args([]), names=["x", "y"])
    assert s.names == ("x", "y")


@dataclass(frozen=True, kw_only=True)
class Declared(cli.Settings):
    GROUPS = {None: "", "run": "run", "advanced": "advanced: rare"}
    size: int = flags.flag(4, "side (px)", action=cli.Given, group="run")
    rate: float | None = flags.flag(None, "rate (default: from --size)", group="advanced")
    folder: Path = flags.flag(Path("out"), "where")
    mode: str = flags.flag("a", "mode", choices=["a", "b"], group="run",
                           also=[("--b-mode", {"action": "store_const", "const": "b", "help": "--mode b"})])
    tags: tuple[str, ...] = flags.flag((), "tag, repeatable", action="append", group="advanced")
    runs: tuple[Path, ...] = flags.flag((), "run folders", type=Path, nargs="*")
    umap: bool = flags.flag(True, "skip the UMAP", name="--no-umap", action="store_false")
    quiet: bool = flags.flag(False, "no progress bar", run_only=True)


def test_one_declaration_gives_the_parser_the_settings_and_the_run_only_flags():
    p = flags.parser(Declared, "doc")
    assert {a.dest for a in p._actions} - {"help"} == {f.name for f in dataclasses.fields(Declared)} - {"given"}
    s = Declared.from_args(p.parse_args(["--size", "4", "--rate", "0.5", "--folder", "x", "--b-mode",
                                         "--tags", "t", "--tags", "u", "--quiet", "--runs", "r", "--no-umap"]))
    assert (s.size, s.rate, s.folder, s.mode, s.tags, s.quiet) == (4, 0.5, Path("x"), "b", ("t", "u"), True)
    assert (s.runs, s.umap) == ((Path("r"),), False)
    assert s.given == {"size"}  # cli.Given: a typed value, even the default, is noted
    assert Declared.from_args(p.parse_args([])) == Declared()  # the parser's defaults are the fields'
    assert flags.run_only(Declared) == {"quiet"}
    text = p.format_help().split("options:")[1]  # sections in GROUPS order, the shown default once
    assert text.index("--quiet") < text.index("run:") < text.index("--size") < text.index("advanced: rare")
    assert "side (px) (default: 4)" in " ".join(text.split())
    with pytest.raises(SystemExit):
        p.parse_args(["--size", "x"])  # int from the annotation


def test_adding_a_declaration_adds_a_flag_without_a_second_edit():
    @dataclass(frozen=True, kw_only=True)
    class More(Declared):
        new_flag: int = flags.flag(7, "a new one", group="run", run_only=True)

    p = flags.parser(More, "doc")
    s = More.from_args(p.parse_args(["--new-flag", "8"]))
    assert s.as_dict()["new_flag"] == 8 and flags.run_only(More) == {"quiet", "new_flag"}
    assert "a new one (default: 7)" in " ".join(p.format_help().split())

    @dataclass(frozen=True, kw_only=True)
    class Lost(Declared):
        lost: int = flags.flag(1, "in a section GROUPS lacks", group="nowhere")

    with pytest.raises(KeyError):
        flags.parser(Lost, "doc")


# Each declared stage: script, manifest stage, class, its run-only flags as outputs.RUN_ONLY listed
# them by hand before they were declared with the flags.
DECLARED = [
    ("0-segmentation/segment.py", "0-segmentation", "wingclr.segment.settings.SegmentSettings",
     {"overwrite", "progress", "device", "num_workers", "batch_size", "flush_every", "shard", "merge"}),
    ("0-segmentation/train_maskrcnn.py", "0-train-maskrcnn", "wingclr.segment.settings.MaskRCNNSettings",
     {"overwrite", "quiet", "device", "num_workers"}),
    ("1-clustering/cluster.py", "1-clustering", "wingclr.cluster.settings.ClusterSettings",
     {"overwrite", "quiet", "yes", "interactive", "sweep", "no_show", "batch_size", "device", "num_workers",
      "allow_random_features"}),
    ("2-create_dataset/create_dataset.py", "2-create_dataset", "wingclr.dataset.DatasetSettings",
     {"overwrite", "quiet", "num_workers", "update"}),
    ("3-training/train.py", "3-training", "wingclr.train.settings.TrainSettings",
     {"overwrite", "quiet", "num_workers", "devices", "accelerator", "num_nodes", "cache_dir", "compile",
      "keep_last", "save_every_min", "cache_only", "grid", "batch_sizes", "epoch_list", "temperatures"}),
    ("4-embed/embed.py", "4-embed", "wingclr.embed.settings.EmbedSettings",
     {"overwrite", "quiet", "device", "num_workers", "cache_dir"}),
    ("5-evaluation/evaluate.py", "5-evaluation", "wingclr.evaluate.settings.EvalSettings",
     {"overwrite", "quiet", "device", "num_workers", "cache_dir"}),
]


@pytest.mark.parametrize("script,stage,cls,old_run_only", DECLARED, ids=[d[1] for d in DECLARED])
def test_a_declared_stage_gets_its_parser_and_run_only_flags_from_its_settings_class(
        script, stage, cls, old_run_only):
    from wingclr.outputs import RUN_ONLY

    p, cls = load_stage(script).get_args_parser(), settings_class(cls)
    names = [f.name for f in flags.declared(cls)]
    assert names == [f.name for f in dataclasses.fields(cls) if f.name != "given"]
    aliases = (["--no-pretrained"], ["--no-baselines"], ["--no-progress"])  # declared with `also`
    own = [a for a in p._actions[1:] if a.option_strings not in aliases]
    assert [a.dest for a in own] == names  # field order is the Namespace's (and the manifest's)
    for action in own:  # each flag is its field's name (or the one it declares), its default the field's
        field = cls.__dataclass_fields__[action.dest]
        assert action.option_strings[0] == (field.metadata["flag"]["name"] or flags.option(field.name))
        default = list(field.default) if action.nargs == "*" or action.dest == "band_group" else field.default
        assert action.default == default
    assert RUN_ONLY[stage] == flags.run_only(cls) == old_run_only


def test_every_stage_declares_its_flags_once():
    assert [d[:3] for d in DECLARED] == [s[:3] for s in STAGES]  # no stage left with a hand-written parser
    for _, _, cls, _ in STAGES:
        assert flags.declared(settings_class(cls)), cls


def test_one_of_groups_flags_that_exclude_each_other():
    @dataclass(frozen=True, kw_only=True)
    class Source(cli.Settings):
        GROUPS = {None: "", "source": flags.OneOf(required=True)}
        coco: Path | None = flags.flag(None, "COCO file", group="source")
        masks: Path | None = flags.flag(None, "mask folder", group="source")

    p = flags.parser(Source, "doc")
    assert Source.from_args(p.parse_args(["--masks", "m"])) == Source(masks=Path("m"))
    for argv in ([], ["--coco", "c", "--masks", "m"]):  # exactly one is required
        with pytest.raises(SystemExit):
            p.parse_args(argv)
    assert "(--coco COCO | --masks MASKS)" in p.format_usage()


def test_stage3_defaults_have_one_home():
    from wingclr.train import grid, recipes, simclr
    from wingclr.train import settings as declaration

    # the grid, the recipes and the optimiser read the defaults declared with the flags
    assert grid.DEFAULTS == {"batch_size": 256, "epochs": 300, "temperature": 0.5}
    assert grid.DEFAULTS.items() <= flags.defaults(declaration.TrainSettings).items()
    assert grid.GRID[0] == (declaration.BATCH_SIZES[0], declaration.EPOCHS[0], declaration.TEMPERATURES[0])
    assert recipes.RECIPES is declaration.RECIPES and recipes.WEIGHT_DECAY is declaration.WEIGHT_DECAY
    assert simclr.BASE_LR is declaration.BASE_LR


def test_train_maskrcnn_records_the_default_wing_classes_as_before():
    from wingclr.demo import WING_CLASSES

    module = load_stage("0-segmentation/train_maskrcnn.py")
    args = module.get_args_parser().parse_args(["--images", "p", "--masks", "m"])
    seen = {}
    module.train_maskrcnn = lambda s: seen.setdefault("s", s)
    module.main(args)
    assert seen["s"].classes == tuple(WING_CLASSES)
    assert recorded_settings(seen["s"], "0-train-maskrcnn")["classes"] == list(WING_CLASSES)


# Modules that are command lines themselves (their own parser, nothing passed on) and the converter.
OWN_NAMESPACE = {"cli.py", "__main__.py", "isnet.py", "lite0.py"}


def test_no_stage_module_takes_or_writes_a_namespace():
    found = []
    for path in sorted((REPO / "wingclr").rglob("*.py")):
        if path.name in OWN_NAMESPACE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in node.args.args + node.args.kwonlyargs]
                found += [f"{path.name}:{node.lineno} {node.name}(args)" for n in names if n == "args"]
            if isinstance(node, ast.Attribute) and node.attr == "Namespace":
                found.append(f"{path.name}:{node.lineno} argparse.Namespace")
            if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setattr"
                    and getattr(node.args[0], "id", "") in ("args", "s")):
                found.append(f"{path.name}:{node.lineno} setattr")
    assert not found, found
