"""The loop's optimizer calls: past Accelerate's wrapper where it adds nothing, the weights of a hand loop."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import accelerate.optimizer
import pytest
import torch
from accelerate import Accelerator
from helpers.tiny import tiny_classification_data, tiny_mlp
from torch import nn
from torch.utils.data import DataLoader

from callbacks_kit import Callback, LearningRateScheduler, Trainer
from callbacks_kit.compat import reset_accelerator_singletons

Factory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


def step_lr(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)


def loader() -> DataLoader:
    return DataLoader(tiny_classification_data(40), batch_size=4)  # 10 batches, in order


def optimizer_for(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)


def hand_loop(accumulation: int, clip: float | None, schedule: Factory | None, epochs: int = 2) -> list[torch.Tensor]:
    """What a user writes by hand with Accelerate: the reference for the Trainer's weights."""
    reset_accelerator_singletons()
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    model = tiny_mlp()
    model, optimizer, data = accelerator.prepare(model, optimizer_for(model), loader())
    scheduler = schedule(optimizer) if schedule is not None else None
    for _ in range(epochs):
        for x, y in data:
            with accelerator.accumulate(model):
                accelerator.backward(nn.functional.cross_entropy(model(x), y))
                if clip is not None and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
                if scheduler is not None and accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


class WrapperScheduler(Callback):
    """A user's own callback whose scheduler is built on `trainer.optimizer`, Accelerate's wrapper."""

    def __init__(self) -> None:
        self.scheduler: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.scheduler = step_lr(trainer.optimizer)

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if trainer.state.optimizer_stepped:
            self.scheduler.step()


@pytest.fixture
def lomo_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts Accelerate's per-step `is_lomo_available` checks (the cost the direct calls avoid)."""
    calls: list[int] = []
    original = accelerate.optimizer.is_lomo_available

    def counted() -> bool:
        calls.append(1)
        return original()

    monkeypatch.setattr(accelerate.optimizer, "is_lomo_available", counted)
    return calls


@pytest.mark.parametrize(
    ("accumulation", "clip", "schedule", "direct"),
    [
        (1, None, None, True),
        (3, None, None, True),
        (1, 0.5, "factory", True),
        (2, None, "on the wrapper", False),
    ],
)
def test_trainer_weights_equal_a_hand_written_accelerate_loop(
    lomo_checks: list[int], accumulation: int, clip: float | None, schedule: str | None, direct: bool
) -> None:
    """Bit for bit, whether the loop calls the optimizer directly or through Accelerate's wrapper.

    A scheduler built on the wrapper replaces the wrapper's `step` to count its calls: the
    loop then goes through the wrapper, and PyTorch sees every step (no warning that the
    scheduler stepped first).
    """
    expected = hand_loop(accumulation, clip, step_lr if schedule else None)
    lomo_checks.clear()
    model = tiny_mlp()
    callbacks: list[Callback] = []
    if schedule == "factory":
        callbacks.append(LearningRateScheduler(step_lr, interval="step"))
    elif schedule == "on the wrapper":
        callbacks.append(WrapperScheduler())
    trainer = Trainer(
        model,
        optimizer_for(model),
        nn.CrossEntropyLoss(),
        callbacks=callbacks,
        cpu=True,
        gradient_accumulation_steps=accumulation,
        max_grad_norm=clip,
        progress_bar=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = trainer.fit(loader(), epochs=2)
    assert state.global_step == 2 * -(-10 // accumulation)
    for got, want in zip(trainer.unwrapped_model.parameters(), expected, strict=True):
        assert torch.equal(got, want)
    assert not [w for w in caught if "optimizer.step()" in str(w.message)]
    if schedule is not None:
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5 ** (state.global_step // 3))
    # Accelerate's wrapper asks importlib twice per step; the direct calls never do.
    assert (len(lomo_checks) == 0) is direct
