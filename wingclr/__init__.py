"""wingclr: butterfly specimen photos -> SimCLR embeddings, as a staged pipeline.

Shared code for the numbered stage scripts; see README.md for the stages.
"""

__version__ = "0.1.0"
