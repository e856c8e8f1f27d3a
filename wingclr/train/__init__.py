"""Stage 3: SimCLR training (module, augmentations, loaders, the grid, recipes, run folders)."""
