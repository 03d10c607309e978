"""The peers of section 1: PyTorch Lightning and pytorch-accelerated, each as its users configure it.

Each `*_runner` returns `(runner, note)`: the runner is None, and the note says why, when
the framework is not installed (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn
from torch.utils.data import Dataset

from benchmarks.common import LR, Batch
from benchmarks.lockstep import Lockstep, LockstepSampler, Runner
from benchmarks.workloads import Case
from callbacks_kit.compat import reset_accelerator_singletons

NOT_INSTALLED = "not installed (pip install -e '.[bench]')"


class BatchDataset(Dataset):
    """Item i is the whole pre-made batch i."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> Batch:
        return self.batches[index]


def _only_item(items: list[Batch]) -> Batch:
    return items[0]


def lightning_runner() -> tuple[Runner | None, str]:
    """PyTorch Lightning as its users configure it; its logger off, as ours is by default."""
    try:
        import lightning as L  # noqa: N812 (Lightning's own convention)
    except ImportError:
        return None, NOT_INSTALLED
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)

    class LitClassifier(L.LightningModule):
        def __init__(self, model: nn.Module, loss_fn: nn.Module) -> None:
            super().__init__()
            self.model, self.loss_fn = model, loss_fn

        def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
            inputs, targets = batch
            return self.loss_fn(self.model(inputs), targets)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=LR)

    def run(case: Case, data: Lockstep) -> None:
        model, _ = case.fresh()
        trainer = L.Trainer(
            accelerator="gpu" if case.device.type == "cuda" else "cpu",
            devices=1,
            max_epochs=1,
            precision={"no": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}[case.mixed_precision],
            logger=False,  # ours writes no logs unless a TensorBoardLogger is added
            enable_checkpointing=False,  # nor checkpoints
            enable_model_summary=False,  # nor a summary; the progress bar stays on, as ours does
        )
        trainer.fit(LitClassifier(model, case.loss_fn), train_dataloaders=data)

    return run, f"lightning {L.__version__}"


def pytorch_accelerated_runner() -> tuple[Runner | None, str]:
    """pytorch-accelerated with its default callbacks (progress bar, printed metrics, NaN check)."""
    try:
        import pytorch_accelerated
    except ImportError:
        return None, NOT_INSTALLED

    def run(case: Case, data: Lockstep) -> None:
        model, optimizer = case.fresh()
        reset_accelerator_singletons()
        os.environ["ACCELERATE_MIXED_PRECISION"] = case.mixed_precision  # its Accelerator() reads this
        trainer = pytorch_accelerated.Trainer(model, loss_func=case.loss_fn, optimizer=optimizer)
        # It only takes a dataset: one item per pre-made batch, read in the main process.
        trainer.train(
            train_dataset=BatchDataset(case.batches),
            num_epochs=1,
            per_device_batch_size=1,
            collate_fn=_only_item,
            train_dataloader_kwargs={"sampler": LockstepSampler(data), "num_workers": 0, "pin_memory": False},
        )

    return run, f"pytorch-accelerated {pytorch_accelerated.__version__}"


def peer_runners() -> dict[str, tuple[Runner | None, str]]:
    """Every peer by its label in the tables: its runner (None when not installed) and a note."""
    return {"PyTorch Lightning": lightning_runner(), "pytorch-accelerated": pytorch_accelerated_runner()}
