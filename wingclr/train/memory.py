"""GPU memory of a SimCLR training step, estimated before training starts.

Activations kept for the backward pass grow with the images per GPU, the views (2), the pixels
and the bytes per value; the weights, gradients and optimiser state are small next to them.
Per view of one image at 224 px in bf16 (two bytes a value), from the published ResNet-50 AMP
figures behind the issue's estimate (~34 GiB at 256 images per GPU, two views: 68 MiB a view);
the other backbones are scaled from it by their activation counts and are rougher.
``benchmarks/gpu_check.py`` prints the measured peak beside this estimate.
"""

from __future__ import annotations

from ..cli import UserError

MIB_PER_VIEW_224_BF16 = {  # MiB of saved activations per image view at 224 px, 2 bytes a value
    "resnet18": 24.0, "resnet50": 68.0, "efficientnet_b0": 80.0, "vit_b_16": 60.0,
    "timm/efficientnet_lite0": 70.0, "timm/resnet50": 68.0,
}
DEFAULT_MIB = 68.0  # any other backbone: ResNet-50's
VIEWS = 2
BYTES = {"bf16-mixed": 2, "16-mixed": 2, "bf16-true": 2, "16-true": 2, "32-true": 4, "32": 4}
OVERHEAD_GIB = 1.5  # CUDA context, cuDNN workspace, weights + gradients + momentum of ResNet-50


def activation_gib(*, backbone: str, input_size: int, batch_per_gpu: int, precision: str) -> float:
    """Estimated GiB one GPU needs for a training step of ``batch_per_gpu`` images (two views).

    Args:
        backbone: stage 3's ``--backbone``.
        input_size: side of the views (px); activations grow with its square.
        batch_per_gpu: images per process (``--batch-size`` / processes).
        precision: Lightning precision; 32-bit doubles the activations.
    """
    per_view = MIB_PER_VIEW_224_BF16.get(backbone, DEFAULT_MIB) * (input_size / 224) ** 2
    per_view *= BYTES.get(precision, 4) / 2
    return per_view * VIEWS * batch_per_gpu / 1024 + OVERHEAD_GIB


def memory_message(*, backbone: str, input_size: int, batch_per_gpu: int, precision: str,
                   free_gib: float, processes: int = 1) -> str | None:
    """The one line saying the step will not fit (None when the estimate fits ``free_gib``)."""
    need = activation_gib(backbone=backbone, input_size=input_size, batch_per_gpu=batch_per_gpu,
                          precision=precision)
    if need <= free_gib:
        return None
    fits = max(1, int(batch_per_gpu * (free_gib - OVERHEAD_GIB) / (need - OVERHEAD_GIB)))
    fits = 1 << (fits.bit_length() - 1)  # a power of two
    more = -(-batch_per_gpu // fits)  # GPUs that would split this batch
    bf16 = "; --precision bf16-mixed halves it" if BYTES.get(precision, 4) == 4 else ""
    return (f"the training step needs ~{need:.0f} GiB per GPU ({backbone}, {input_size} px, "
            f"{batch_per_gpu} images x 2 views per GPU, {precision}) but the GPU has {free_gib:.0f} GiB "
            f"free: pass --batch-size {fits * processes} (~{fits} per GPU fit), or spread the batch over "
            f"{more * processes} GPUs (--devices, --num-nodes), or a smaller --input-size{bf16}")


def check_gpu_memory(*, backbone: str, input_size: int, batch_per_gpu: int, precision: str,
                     device, processes: int = 1) -> None:
    """Refuse, in one line, a per-GPU batch whose estimate exceeds the device's free memory.

    Raises:
        UserError: it will not fit (:func:`memory_message`).
    """
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    message = memory_message(backbone=backbone, input_size=input_size, batch_per_gpu=batch_per_gpu,
                             precision=precision, free_gib=free / 2**30, processes=processes)
    if message:
        raise UserError(message)
