"""Stage 1: backbone features -> UMAP -> HDBSCAN, the keep-or-retry loop and its plots."""
