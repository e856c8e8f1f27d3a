"""Stage settings: one frozen object per stage instead of the argparse Namespace between modules.

The manifest's "args" must be what the Namespace gave before (same keys, order and values), so
finished outputs made by earlier versions are still recognised as finished.
"""

import argparse
import ast
import dataclasses
import json
from dataclasses import dataclass

import pytest

from conftest import REPO, load_stage
from wingclr import cli
from wingclr.outputs import settings

STAGES = [  # script, manifest stage, settings class, a command line
    ("0-segmentation/segment.py", "0-segmentation", "wingclr.segment.settings.SegmentSettings",
     ["--method", "threshold", "--background", "0,0,0"]),
    ("0-segmentation/train_maskrcnn.py", "0-train-maskrcnn", "wingclr.segment.settings.MaskRCNNSettings",
     ["--images", "photos", "--masks", "masks"]),
    ("1-clustering/cluster.py", "1-clustering", "wingclr.cluster.settings.ClusterSettings",
     ["--min-cluster-size", "5", "--cluster-selection-epsilon", "0.2"]),
    ("2-create_dataset/create_dataset.py", "2-create_dataset", "wingclr.split.DatasetSettings",
     ["--val-fraction", "0.3"]),
    ("3-training/train.py", "3-training", "wingclr.ssl.settings.TrainSettings",
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
    assert json.dumps(settings(s, stage)) == json.dumps(settings(flags, stage))  # keys, order, values
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
    assert settings(s, "any") == {"size": 4, "names": ["b", "c"]}


def test_from_args_changes_replace_a_flag_value_and_lists_still_become_tuples():
    s = Tiny.from_args(tiny_parser().parse_args([]), names=["x", "y"])
    assert s.names == ("x", "y")


def test_train_maskrcnn_records_the_default_wing_classes_as_before():
    from wingclr.demo import WING_CLASSES

    module = load_stage("0-segmentation/train_maskrcnn.py")
    args = module.get_args_parser().parse_args(["--images", "p", "--masks", "m"])
    seen = {}
    module.train_maskrcnn = lambda s: seen.setdefault("s", s)
    module.main(args)
    assert seen["s"].classes == tuple(WING_CLASSES)
    assert settings(seen["s"], "0-train-maskrcnn")["classes"] == list(WING_CLASSES)


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
