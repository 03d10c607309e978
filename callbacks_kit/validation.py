"""The validation pass of a `Trainer`: loss and metrics summed on the device, each sample counted once.

`Trainer.fit` runs it after each epoch and `Trainer.evaluate` on any loader; `EMA` through
`evaluate` on its averaged model. It reads and sets only the trainer's public state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from callbacks_kit.batches import batch_size
from callbacks_kit.errors import TrainerError
from callbacks_kit.metrics import compute_gathered, is_stateful_metric

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


@torch.no_grad()
def validate(trainer: Trainer, loader: Any, prefix: str, model: nn.Module | None = None) -> dict[str, float]:
    """Loss and metrics summed on the device over gathered batches; read once at the end."""
    state, accelerator = trainer.state, trainer.accelerator
    model = trainer.model if model is None else model
    previous = state.stage, state.validation_prefix, model.training
    state.stage, state.validation_prefix = "validate", prefix
    model.eval()
    trainer.callbacks.fire("on_validation_start", trainer)
    stateful = {name: m for name, m in trainer.metrics.items() if is_stateful_metric(m)}
    functions = [fn for fn in trainer.metrics.values() if not is_stateful_metric(fn)]
    for metric in stateful.values():
        metric.reset()
    names = ["loss", *(name for name in trainer.metrics if name not in stateful)]
    sums = torch.zeros(len(names), device=trainer.device, dtype=torch.float64)
    count = 0
    for batch in loader:
        inputs, targets = trainer.unpack_batch(batch)
        loss, outputs = trainer.forward(inputs, targets, model)
        if trainer.loss_fn is None:
            # The model made the loss: average per-process values, weighted by batch size.
            n = batch_size(inputs, targets)
            values = [loss.detach().float() * n]
            values += [fn(outputs, targets).detach().float() * n for fn in functions]
            sums += accelerator.reduce(torch.stack(values).double(), reduction="sum")
            count += n * accelerator.num_processes
            gathered = accelerator.gather_for_metrics((outputs, targets)) if stateful else ()
        else:
            outputs, targets = gathered = accelerator.gather_for_metrics((outputs, targets))
            n = batch_size(outputs, targets)
            values = [trainer.loss_fn(outputs, targets).detach().float() * n]
            values += [fn(outputs, targets).detach().float() * n for fn in functions]
            sums += torch.stack(values).double()
            count += n
        for metric in stateful.values():
            metric.update(*gathered)
        trainer.last_inputs, trainer.last_targets, trainer.last_outputs = inputs, targets, outputs
        trainer.callbacks.fire("on_validation_batch_end", trainer)
    if count == 0:
        raise TrainerError(f"the {prefix} loader yielded no batches; check the dataset and batch size")
    results = {f"{prefix}/{name}": value / count for name, value in zip(names, sums.tolist(), strict=True)}
    results.update({f"{prefix}/{name}": one_number(name, compute_gathered(m)) for name, m in stateful.items()})
    results = {f"{prefix}/{name}": results[f"{prefix}/{name}"] for name in ["loss", *trainer.metrics]}  # given order
    state.metrics.update(results)
    trainer.callbacks.fire("on_validation_end", trainer)
    state.stage, state.validation_prefix = previous[:2]
    model.train(previous[2])
    return results


def one_number(name: str, value: Any) -> float:
    """The value a metric object computed, as a float; anything but one number is refused by name."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
    raise TrainerError(
        f"metric {name!r} computed {shape}; val/{name} needs one number: average it (e.g. torchmetrics' "
        "average='macro') or log the per-class values from a callback"
    )
