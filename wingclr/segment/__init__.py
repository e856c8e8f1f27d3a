"""Stage 0: wing masks (Mask R-CNN, rembg, threshold), annotations and Mask R-CNN training."""
