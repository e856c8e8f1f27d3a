"""Count the operations that make the host wait for the GPU, on any device (CPU included).

On CUDA these ops copy a result to the host before Python goes on (a value read with ``.item()``
or ``bool()``, a shape that depends on the data such as ``nonzero`` or boolean-mask indexing), so
the CPU stops queueing work and the GPU idles until the queue refills. :class:`SyncCounter` sees
every aten op under a ``TorchDispatchMode``, so a test on the CPU finds the ops that would sync on
a GPU (benchmarks/gpu_check.py prints them per training step).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ops whose output shape or value the host needs before it can go on
SYNC_OPS = {"nonzero", "_local_scalar_dense", "is_nonzero", "masked_select", "masked_scatter",
            "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim", "equal", "allclose",
            "nonzero_numpy", "argwhere", "repeat_interleave", "bincount", "histc", "item"}


def _is_bool_index(op_name: str, op_args) -> bool:
    """``x[mask]`` / ``x[mask] = y``: ``aten.index`` or ``index_put`` with a boolean index."""
    if op_name not in ("index", "index_put", "index_put_", "_index_put_impl_"):
        return False
    indices = op_args[1] if len(op_args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


class SyncCounter(TorchDispatchMode):
    """``with SyncCounter() as c: ...``; then ``c.counts`` (op name -> calls) and ``c.total``."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, op_args=(), op_kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in SYNC_OPS or _is_bool_index(name, op_args):
            self.counts[name] += 1
        return func(*op_args, **(op_kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def step_sync_callback():
    """A Lightning callback counting the sync ops of each training batch (forward, backward,
    optimiser step): ``callback.steps`` is one :class:`~collections.Counter` per batch."""
    import pytorch_lightning as pl

    class StepSyncs(pl.Callback):
        def __init__(self):
            self.steps: list[Counter] = []
            self._mode = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._mode = SyncCounter()
            self._mode.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self._mode.__exit__(None, None, None)
            self.steps.append(self._mode.counts)

    return StepSyncs()
