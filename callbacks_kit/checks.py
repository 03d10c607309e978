"""Input checks run before any training time is spent: options, loaders, the loss, one sanity batch.

Each failure is a `TrainerError` that names the problem and the fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import send_to_device

from callbacks_kit.batches import len_or_none, side_forward
from callbacks_kit.compat import BATCH_NORMS
from callbacks_kit.errors import TrainerError

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer

MIXED_PRECISION = ("no", "fp16", "bf16")


def check_options(
    mixed_precision: str, accumulation: int, max_grad_norm: float | None, log_every: int, cpu: bool
) -> None:
    """The Trainer's numeric and precision options."""
    if mixed_precision not in MIXED_PRECISION:
        raise TrainerError(f"mixed_precision={mixed_precision!r} is not one of {MIXED_PRECISION}; pick one of those")
    if mixed_precision == "fp16" and (cpu or not torch.cuda.is_available()):
        raise TrainerError(
            "mixed_precision='fp16' needs a CUDA GPU and none is in use here; "
            "use mixed_precision='bf16' on a CPU, or 'no'"
        )
    if not isinstance(accumulation, int) or accumulation < 1:
        raise TrainerError(f"gradient_accumulation_steps must be an int >= 1, got {accumulation!r}")
    if max_grad_norm is not None and not (isinstance(max_grad_norm, (int, float)) and max_grad_norm > 0):
        raise TrainerError(f"max_grad_norm must be a positive number or None, got {max_grad_norm!r}")
    if not isinstance(log_every, int) or log_every < 1:
        raise TrainerError(f"log_every_n_steps must be an int >= 1, got {log_every!r}")


def check_model_and_optimizer(model: Any, optimizer: Any) -> None:
    """A module and an optimizer, before Accelerate wraps them."""
    if not isinstance(model, torch.nn.Module):
        raise TrainerError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TrainerError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")


def check_epochs(epochs: Any) -> None:
    """`fit(epochs=...)`: a positive int."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise TrainerError(f"epochs must be a positive int, got {epochs!r}")


def check_loader(loader: Any, name: str) -> None:
    """An iterable of batches that is not known to be empty."""
    if isinstance(loader, (str, bytes)) or not isinstance(loader, Iterable):
        raise TrainerError(f"{name} must be an iterable of batches such as a DataLoader, got {type(loader).__name__}")
    if len_or_none(loader) == 0:
        raise TrainerError(
            f"{name} is empty (0 batches); check the dataset path and that batch_size <= dataset size "
            "when drop_last=True"
        )


def check_last_batch(loader: Any, model: torch.nn.Module, num_processes: int) -> None:
    """A training DataLoader whose last batch holds one sample, which a BatchNorm in training cannot use.

    Without this check, such a run fails at the end of its first epoch ("Expected more than 1
    value per channel") and saves nothing. Checked for one process, where the batches are the
    DataLoader's own.
    """
    if num_processes != 1 or not isinstance(loader, torch.utils.data.DataLoader) or loader.drop_last:
        return
    size, dataset = loader.batch_size, loader.dataset
    try:
        samples = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return
    if not size or samples <= size or samples % size != 1:
        return
    if any(isinstance(m, BATCH_NORMS) and m.training for m in model.modules()):
        raise TrainerError(
            f"train_loader's last batch holds 1 sample ({samples} samples, batch_size {size}), and BatchNorm "
            "cannot train on one sample; pass drop_last=True to the DataLoader, or change the batch size"
        )


def check_loss(loss: Any, need_grad: bool = True) -> None:
    """A floating-point scalar tensor that (in training) has a gradient."""
    if not isinstance(loss, torch.Tensor):
        raise TrainerError(f"the loss is a {type(loss).__name__}, not a tensor; return a scalar torch.Tensor")
    if loss.ndim != 0:
        raise TrainerError(
            f"the loss has shape {tuple(loss.shape)}, not a scalar; reduce it (reduction='mean' or .mean())"
        )
    if not loss.is_floating_point():
        raise TrainerError(f"the loss has dtype {loss.dtype}; it must be a floating-point scalar")
    if need_grad and not loss.requires_grad:
        raise TrainerError(
            "the loss does not require grad: no trainable parameter took part in it. Are all parameters "
            "frozen, or was the loss computed under torch.no_grad() or from .detach()ed outputs?"
        )


def extract_loss(raw: Any) -> torch.Tensor:
    """The loss a model returned itself: a tensor, or the `loss` of a mapping or an object."""
    if isinstance(raw, torch.Tensor):
        return raw
    if isinstance(raw, Mapping) and "loss" in raw:
        return raw["loss"]
    if hasattr(raw, "loss"):
        return raw.loss
    raise TrainerError(
        f"loss_fn is None, so the model must return the loss, but it returned a {type(raw).__name__}; "
        "return a scalar tensor or a dict with a 'loss' key, or pass loss_fn=..."
    )


@torch.no_grad()
def sanity_check(trainer: Trainer, loader: Any) -> None:
    """Unpack one batch and run the forward, loss and metrics before any training.

    Bad batches, losses or metrics fail here in seconds instead of after an epoch. The
    check runs in eval mode on a forked RNG, so it does not change the run. It reads the
    raw loader, not the prepared one: a half-read prepared loader would stay registered in
    Accelerate's gradient state.
    """
    with side_forward(trainer.model, trainer.device):
        batch = next(iter(loader), None)
        if batch is None:
            raise TrainerError("the loader yielded no batches; check the dataset and batch size (drop_last?)")
        inputs, targets = trainer.unpack_batch(send_to_device(batch, trainer.device))
        loss, outputs = trainer.forward(inputs, targets)
        check_loss(loss, need_grad=False)
        for name, fn in trainer.metrics.items():
            value = fn(outputs, targets)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise TrainerError(
                    f"metric {name!r} returned {type(value).__name__} "
                    f"{tuple(value.shape) if isinstance(value, torch.Tensor) else ''}; "
                    "a metric must return a one-element tensor (the batch mean)"
                )
