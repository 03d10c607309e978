"""The models, pre-made data and hand-written Accelerate loop that the sections train."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from torch import nn

from benchmarks.common import LR, Batch
from callbacks_kit.distributed import OptimizerCalls


@dataclass
class Case:
    """One model and its data, trained by every runner from the same initial weights."""

    name: str
    template: nn.Module
    batches: list[Batch]
    device: torch.device
    mixed_precision: str
    loss_fn: nn.Module = field(default_factory=nn.CrossEntropyLoss)

    def fresh(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The same initial model every time, and a new AdamW over it."""
        model = copy.deepcopy(self.template)
        return model, torch.optim.AdamW(model.parameters(), lr=LR)


class HandLoop:
    """The loop a user writes by hand with Accelerate: the baseline, one step at a time.

    With `direct`, its optimizer calls are the Trainer's (`OptimizerCalls`: the optimizer
    inside Accelerate's wrapper where the wrapper adds nothing), so that the Trainer's
    time beside it is its own bookkeeping alone.
    """

    def __init__(self, case: Case, direct: bool = False) -> None:
        self.accelerator = Accelerator(cpu=case.device.type == "cpu", mixed_precision=case.mixed_precision)
        self.model, self.optimizer = self.accelerator.prepare(*case.fresh())
        self.model.train()
        self.loss_fn = case.loss_fn
        self.calls = OptimizerCalls(self.accelerator, self.optimizer) if direct else self.optimizer

    @torch.enable_grad()
    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """One forward, backward and optimizer step."""
        loss = self.loss_fn(self.model(inputs), targets)
        self.accelerator.backward(loss)
        self.calls.step()
        self.calls.zero_grad()


def tiny_mlp() -> nn.Module:
    """32 features to 10 classes through 64 hidden units: almost nothing but overhead."""
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))


def small_cnn() -> nn.Module:
    """Two conv layers on 32 px images: a few ms of real work per step."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def make_batches(shape: tuple[int, ...], n: int, device: torch.device) -> list[Batch]:
    """`n` seeded batches of inputs of `shape` and 10-class targets, already on `device`."""
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(shape, generator=g).to(device), torch.randint(10, (shape[0],), generator=g).to(device))
        for _ in range(n)
    ]
