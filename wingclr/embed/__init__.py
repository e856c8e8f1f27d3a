"""Stage 4 (``4-embed/embed.py``): a trained backbone's embeddings of every image."""
