"""Named SimCLR training recipes for stage 3 (``--recipe``); explicit flags override them.

* ``phenotype`` (default): the original butterfly pipeline's recipe (Puissant et al.,
  ``SimCLR_phenotypic_convergence/MachineLearning/C-Training/1-simCLR_training.py``): no colour
  jitter and no blur, so colour patterns stay informative; crops of >= 50 % of the specimen;
  vertical flips and 90-degree rotations (a specimen photo has no "up"); grayscale 0.2 (lightly's
  default, which the original kept); SGD lr 0.01, momentum 0.9, weight decay 5e-4 with cosine decay
  over the run and no warm-up or batch scaling. The original also sampled every cluster equally
  often (``WeightedRandomSampler``); here every image is drawn equally often (``--balance none``):
  on skewed clusters (one big cluster, many tiny ones, as stage 1 gives on a real drawer)
  balancing made every task worse (README "Real specimens"). From ImageNet, the checkpoint holds
  0.75 x the ImageNet start + 0.25 x the trained weights (``--interpolate 0.25``, WiSE-FT,
  :mod:`wingclr.ssl.interpolate`): on skewed collections the trained weights alone scored below
  their ImageNet start, the mixture at or above it.
* ``simclr``: lightly's ImageNet recipe (SimCLR paper): colour jitter 0.8, grayscale 0.2, blur
  0.5, crops down to 8 %, horizontal flips only; SGD 0.06 x sqrt(batch / 256) after a warm-up.
* ``cpu``: ``simclr`` for a few hundred steps from random initialisation on a laptop (``make demo``,
  ``benchmarks/probe_common.py``): Adam 2e-3 x sqrt(batch / 256), crops >= 30 %, no blur. With
  SGD, crops down to 8 % of a 64 px image and blur, such short runs learn little (measured in
  ``benchmarks/demo_probe.py``); pair it with ``--temperature 0.2``.

Why ``phenotype`` is the default: README "Real specimens" (benchmarks/real_specimens.py).
"""

from __future__ import annotations

from ..cli import UserError

RECIPES = {
    "phenotype": {"min_scale": 0.5, "cj_prob": 0.0, "gray_prob": 0.2, "blur_prob": 0.0,
                  "vf_prob": 0.5, "rr_prob": 0.5, "optimizer": "sgd", "lr": 0.01,
                  "lr_scaling": "none", "weight_decay": 5e-4, "warmup_epochs": 0,
                  "balance": "none", "backbone_lr_scale": 1.0, "bn": "train", "forward": "separate",
                  "interpolate": 0.25},
    "simclr": {"min_scale": 0.08, "cj_prob": 0.8, "gray_prob": 0.2, "blur_prob": 0.5,
               "vf_prob": 0.0, "rr_prob": 0.0, "optimizer": "sgd", "lr": None,
               "lr_scaling": "sqrt", "weight_decay": None, "warmup_epochs": 10,
               "balance": "none", "backbone_lr_scale": 1.0, "bn": "train", "forward": "separate",
               "interpolate": 1.0},
}
RECIPES["cpu"] = {**RECIPES["simclr"], "min_scale": 0.3, "blur_prob": 0.0, "optimizer": "adam", "lr": 2e-3}
DEFAULT_RECIPE = "phenotype"
PROBABILITIES = ("cj_prob", "gray_prob", "blur_prob", "vf_prob", "rr_prob")


def add_recipe_args(p) -> None:
    """``--recipe`` and the flags it sets (each defaults to the recipe's value)."""
    from .simclr import BASE_LR

    g = p.add_argument_group("recipe (flags given explicitly override the recipe)")
    g.add_argument("--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE,
                   help="phenotype: the original butterfly pipeline (no colour jitter or blur, "
                        "crops >= 50 %%, flips and 90-degree turns, SGD 0.01, every image drawn equally often); "
                        "simclr: lightly's ImageNet recipe; cpu: simclr with Adam 2e-3, crops >= 30 %%, no "
                        "blur, for short CPU runs (make demo)")
    r = {k: f"phenotype {RECIPES['phenotype'][k]}, simclr {RECIPES['simclr'][k]}" for k in RECIPES["simclr"]}
    g.add_argument("--min-scale", type=float, default=None,
                   help=f"smallest random-resized-crop area, fraction of the image ({r['min_scale']})")
    g.add_argument("--cj-prob", type=float, default=None, help=f"colour-jitter probability ({r['cj_prob']})")
    g.add_argument("--gray-prob", type=float, default=None, help=f"grayscale probability ({r['gray_prob']})")
    g.add_argument("--blur-prob", type=float, default=None,
                   help=f"Gaussian-blur probability per view ({r['blur_prob']})")
    g.add_argument("--vf-prob", type=float, default=None, help=f"vertical-flip probability ({r['vf_prob']})")
    g.add_argument("--rr-prob", type=float, default=None,
                   help=f"probability of a 90-degree rotation ({r['rr_prob']})")
    g.add_argument("--optimizer", choices=["sgd", "lars", "adam"], default=None,
                   help=f"optimizer ({r['optimizer']})")
    g.add_argument("--lr", type=float, default=None,
                   help=f"learning rate (phenotype 0.01; simclr: sgd {BASE_LR['sgd']}, lars "
                        f"{BASE_LR['lars']}, adam {BASE_LR['adam']} at batch 256)")
    g.add_argument("--lr-scaling", choices=["sqrt", "none"], default=None,
                   help=f"sqrt: lr x sqrt(batch / 256); none: lr as given ({r['lr_scaling']})")
    g.add_argument("--weight-decay", type=float, default=None,
                   help="weight decay (phenotype 5e-4; simclr: sgd 5e-4, lars/adam 1e-6)")
    g.add_argument("--warmup-epochs", type=int, default=None,
                   help=f"linear learning-rate warm-up, at most 10 %% of the run ({r['warmup_epochs']})")
    g.add_argument("--balance", choices=["none", "sqrt", "clusters"], default=None,
                   help="clusters: every cluster drawn equally often (1 / size); sqrt: in proportion to "
                        "the square root of its size; none: every image equally often; an image is "
                        f"never drawn twice into one batch ({r['balance']})")
    g.add_argument("--backbone-lr-scale", type=float, default=None,
                   help="the backbone's learning rate as a fraction of --lr (the projection head "
                        "trains at --lr); used when starting from --pretrained imagenet, 1 from "
                        f"random init ({r['backbone_lr_scale']})")
    g.add_argument("--bn", choices=["train", "frozen"], default=None,
                   help="backbone BatchNorm: train (batch statistics, running averages updated) or "
                        "frozen (the pretrained statistics kept; affine weights still train) "
                        f"({r['bn']})")
    g.add_argument("--forward", choices=["joint", "separate"], default=None,
                   help="joint: one forward pass of both views concatenated (BatchNorm statistics over "
                        f"both, as lightly's benchmarks); separate: one pass per view ({r['forward']})")
    g.add_argument("--interpolate", type=float, default=None,
                   help="the checkpoint's backbone is (1 - a) x the ImageNet start + a x the trained "
                        "weights (WiSE-FT; 1: the trained weights as they are); used when starting "
                        f"from --pretrained imagenet, 1 from random init ({r['interpolate']})")


def recipe_values(s) -> dict:
    """The recipe flags' values for stage 3's settings ``s``: those given, else ``--recipe``'s (lr
    and weight decay: the optimizer's defaults when the recipe leaves them to it).

    Returns:
        flag -> value for every flag of the recipe (what the run records).

    Raises:
        UserError: a value out of range.
    """
    from .simclr import BASE_LR, WEIGHT_DECAY

    v = {key: value if (value := getattr(s, key)) is not None else default
         for key, default in RECIPES[s.recipe].items()}
    if v["lr"] is None:
        v["lr"] = BASE_LR[v["optimizer"]]
    if v["weight_decay"] is None:
        v["weight_decay"] = WEIGHT_DECAY[v["optimizer"]]
    for key in PROBABILITIES:
        if not 0 <= v[key] <= 1:
            raise UserError(f"--{key.replace('_', '-')} must be in [0, 1], got {v[key]}")
    if not 0 <= v["interpolate"] <= 1:
        raise UserError(f"--interpolate must be in [0, 1], got {v['interpolate']}")
    if not 0 <= v["backbone_lr_scale"] <= 10:
        raise UserError(f"--backbone-lr-scale must be in [0, 10], got {v['backbone_lr_scale']}")
    if not 0 < v["min_scale"] <= 1:
        raise UserError(f"--min-scale must be in (0, 1], got {v['min_scale']}")
    if not v["lr"] > 0 or not v["weight_decay"] >= 0 or v["warmup_epochs"] < 0:
        raise UserError(f"--lr must be > 0, --weight-decay >= 0 and --warmup-epochs >= 0 (got "
                        f"{v['lr']}, {v['weight_decay']}, {v['warmup_epochs']})")
    return v
