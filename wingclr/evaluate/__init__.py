"""Stage 5: linear probe and kNN on frozen embeddings, baselines, plots and the report."""
