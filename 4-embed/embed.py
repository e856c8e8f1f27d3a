"""Stage 4: embed every image of stage 2's unlabeled/ with a trained SimCLR backbone.

Writes, per run, embeddings.csv (image, cluster, split, emb_0..emb_{D-1}; D = 2048 for ResNet-50),
embeddings_pca.csv (PC1..PCk, the axes explaining > 0.5 % of the variance), pca_variance.csv,
pca.png (PC1/PC2 coloured by cluster) and embeddings.npy. The projection head is not used.

Examples:
    python 4-embed/embed.py                          # every finished run in work/3-training
    python 4-embed/embed.py --checkpoints work/3-training/simclr_bs_256_nepochs_300_temp_0.5
    python 4-embed/embed.py --checkpoints run1.ckpt run2.ckpt --data my_clusters
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wingclr import cli, flags  # noqa: E402
from wingclr.embed.settings import EmbedSettings  # noqa: E402


def get_args_parser():
    """Every flag, from its one declaration (wingclr/embed/settings.py EmbedSettings)."""
    return flags.parser(EmbedSettings, __doc__)


def main(args):
    from wingclr.embed.stage import run_embedding

    run_embedding(EmbedSettings.from_args(args))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
