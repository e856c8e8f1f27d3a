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
    p.add_argument("--batch-size", type=int, default=64, help="images per inference batch")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default min(8, CPUs))")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--cache-dir", type=Path, default=cli.WORK / "cache",
                   help="stage 3's decode-once image cache; used when it holds these images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace finished embeddings")
    return p


def main(args):
    from wingclr.embedding import check_embed_args, embed_run, resolve_runs

    check_embed_args(batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                     output=args.output)
    runs = resolve_runs(args.checkpoints, args.training_dir)
    for done, (name, ckpt) in enumerate(runs):
        cli.saved_so_far(f"{done} of {len(runs)} runs embedded in {args.output} (a run folder "
                         "without manifest.json is unfinished)")
        embed_run(name, ckpt, data=args.data, output=args.output, batch_size=args.batch_size,
                  num_workers=args.num_workers, device=args.device, cache_dir=args.cache_dir,
                  quiet=args.quiet, overwrite=args.overwrite)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
