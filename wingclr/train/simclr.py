"""SimCLR as a Lightning module: backbone + lightly projection head + NT-Xent loss.

Learning rate rule of ``--recipe simclr`` (README "Training"): ``lr = base_lr * sqrt(global_batch /
256)``, the square-root scaling the SimCLR paper recommends for large-batch SGD/LARS (its
0.075 * sqrt(B) for LARS is base_lr 1.2 here). Base rates: sgd 0.06, lars 1.2, adam 1e-3. Cosine
decay after a linear warm-up. ``--recipe phenotype`` uses lr 0.01 unscaled and no warm-up
(:mod:`wingclr.train.recipes`).
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch import nn
from lightly.models.modules import SimCLRProjectionHead

from ..models import build_backbone
from .augment import AugmentConfig, BatchAugment, batch_seed
from .loss import IndexedNTXentLoss
from .settings import BASE_LR



def scaled_lr(optimizer: str, global_batch: int, base_lr: float | None = None) -> float:
    """Square-root learning-rate scaling: ``base_lr * sqrt(global_batch / 256)``."""
    return (BASE_LR[optimizer] if base_lr is None else base_lr) * math.sqrt(global_batch / 256)


def lars_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """LARS parameter groups as lightly's benchmarks: weights get weight decay and the layer-wise
    adaptation; BatchNorm (and other normalisation) parameters and biases get neither (lightly's
    LARS adapts only groups whose weight decay is not 0)."""
    from lightly.models.utils import get_weight_decay_parameters

    decay, no_decay = get_weight_decay_parameters([model])
    return [{"name": "weights", "params": decay, "weight_decay": weight_decay},
            {"name": "no_weight_decay", "params": no_decay, "weight_decay": 0.0}]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class SimCLR(pl.LightningModule):
    """SimCLR training module.

    Batches are ``([view0, view1], index)`` with views ``(B, K, S, S)`` float (augmented in
    DataLoader workers), or ``(images, index)`` with ``(B, C, S, S)`` uint8 images that are
    augmented here, on the device, when ``augment`` (one config per view) is given; view ``v``
    then takes the bands ``view_bands[v]`` (cross-modal views) or all of them. ``index`` is each
    image's dataset index: rows of one image are never each other's negatives.

    Fine-tuning from pretrained weights: the backbone trains at ``lr * backbone_lr_scale`` while
    the new projection head trains at ``lr``; ``bn_frozen`` keeps the backbone's BatchNorm
    statistics (running mean and variance) at their pretrained values.
    """

    def __init__(self, backbone: str = "resnet50", in_chans: int = 3, rgb_bands=(0, 1, 2),
                 input_size: int = 224, temperature: float = 0.5, optimizer: str = "sgd",
                 lr: float = 0.06, weight_decay: float = 5e-4, warmup_epochs: int = 10,
                 gather_distributed: bool = False, augment: list[dict] | None = None,
                 view_bands: list[list[int]] | None = None,
                 channels_last: bool = False, compile: bool = False, pretrained: bool = False,
                 backbone_lr_scale: float = 1.0, bn_frozen: bool = False,
                 forward_views: str = "separate", meta: dict | None = None, seed: int = 0):
        super().__init__()
        self.save_hyperparameters(ignore=["pretrained", "meta"])
        self.meta = dict(meta or {})  # saved in every checkpoint (``wingclr``), read by stage 4
        self.backbone, dim = build_backbone(backbone, pretrained, in_chans, rgb_bands, input_size)
        self.embedding_dim = dim
        self.projection_head = SimCLRProjectionHead(dim, dim, 128)
        self.criterion = IndexedNTXentLoss(temperature=temperature, gather_distributed=gather_distributed)
        self.augment = nn.ModuleList(BatchAugment(AugmentConfig(**cfg), in_chans)
                                     for cfg in augment) if augment else None
        for v, bands in enumerate(view_bands or []):  # on the device: no host copy per batch
            self.register_buffer(f"view_index_{v}", torch.tensor(bands, dtype=torch.long), persistent=False)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        # kept out of the module registry, so checkpoints hold the plain (uncompiled) weights
        self.__dict__["_encoder"] = torch.compile(self.encoder) if compile else self.encoder

    def encoder(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` -> projections ``(B, 128)``."""
        return self.projection_head(self.backbone(x))

    def checkpoint_meta(self) -> dict:
        """The run's model metadata (backbone, channels, input size, normalisation, run settings)."""
        return {**self.meta, "embedding_dim": self.embedding_dim}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["wingclr"] = self.checkpoint_meta()

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.hparams.bn_frozen:  # pretrained statistics stay; affine weights train
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` -> projections ``(B, 128)``."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._encoder(x)

    def views(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Two augmented views ``(B, C, S, S)`` float of a batch."""
        images, _ = batch
        if self.augment is None:
            return images[0], images[1]
        bands = [getattr(self, f"view_index_{v}", None) for v in (0, 1)]
        # drawn from (seed, step, process) alone: a resumed run augments each batch as before
        g = torch.Generator(images.device).manual_seed(
            batch_seed(self.hparams.get("seed", 0), self.global_step, self.global_rank))
        with torch.autocast(images.device.type, enabled=False):  # augment in float32
            return tuple(aug(images if b is None else images.index_select(1, b), g)
                         for aug, b in zip(self.augment, bands))

    def projections(self, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projections ``(B, 128)`` of both views: one forward of the concatenated views
        (``forward_views="joint"``: BatchNorm sees both views' statistics at once, as lightly's
        benchmarks) or one forward per view (``"separate"``)."""
        if self.hparams.forward_views == "joint":
            return self(torch.cat([x0, x1])).chunk(2)
        return self(x0), self(x1)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        # no host read here: EpochCheckpoint checks the loss for NaN every CHECK_EVERY steps
        x0, x1 = self.views(batch)
        z0, z1 = self.projections(x0, x1)
        loss = self.criterion(z0, z1, batch[1])
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=x0.shape[0], sync_dist=True)
        return loss

    def configure_optimizers(self):
        from lightly.utils.scheduler import CosineWarmupScheduler

        hp = self.hparams
        head = [p for n, p in self.named_parameters() if not n.startswith("backbone.")]
        params = [{"params": list(self.backbone.parameters()), "lr": hp.lr * hp.backbone_lr_scale},
                  {"params": head, "lr": hp.lr}]
        if hp.optimizer == "adam":
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "lars":
            from lightly.utils.lars import LARS

            opt = LARS(lars_groups(self, hp.weight_decay), lr=hp.lr, momentum=0.9)
        else:
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, self.trainer.max_epochs)
        warmup = int(steps * min(hp.warmup_epochs, epochs // 10) / epochs)  # <= 10 % of the run
        sched = CosineWarmupScheduler(opt, warmup_epochs=warmup, max_epochs=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
