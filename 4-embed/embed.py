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

from wingclr import cli  # noqa: E402
from wingclr.embed.settings import BATCH_SIZE, EmbedSettings  # noqa: E402


def get_args_parser():
    p = cli.parser(__doc__)
    p.add_argument("--checkpoints", type=Path, nargs="*", default=[],
                   help="checkpoint files or training-run folders (default: all finished runs)")
    p.add_argument("--training-dir", type=Path, default=cli.STAGE_DIRS["training"],
                   help="where finished runs are looked up when --checkpoints is not given")
    p.add_argument("--data", type=Path, default=cli.STAGE_DIRS["dataset"],
                   help="stage 2 output (split.csv + unlabeled/) or a folder of cluster folders")
    p.add_argument("--output", type=Path, default=cli.STAGE_DIRS["embedding"],
                   help="one subfolder per run is written here")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="images per inference batch")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default min(8, CPUs))")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--cache-dir", type=Path, default=cli.WORK / "cache",
                   help="stage 3's decode-once image cache; used when it holds these images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace finished embeddings")
    return p


def main(args):
    from wingclr.embed.stage import run_embedding

    run_embedding(EmbedSettings.from_args(args))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
