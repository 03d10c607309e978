"""Input checks run before any training time is spent: options, loaders, the loss, one sanity batch.

Each failure is a `TrainerError` that names the problem and the fix.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import send_to_device

from callbacks_kit.batches import len_or_none, side_forward
from callbacks_kit.compat import BATCH_NORMS
from callbacks_kit.errors import (
    CallbacksKitError,
    PeerProcessError,
    TrainerError,
    is_peer_failure,
    peer_failure_message,
)
from callbacks_kit.metrics import StatefulMetric, compute_gathered, is_stateful_metric

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
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    left_out = [name for name, p in trainable if id(p) not in in_optimizer]
    if trainable and len(left_out) == len(trainable):
        raise TrainerError(
            f"the optimizer holds none of the model's {len(trainable)} trainable parameters, so training would "
            "change nothing; build it from this model: e.g. AdamW(model.parameters()), after any "
            "replace_head or change of the model"
        )
    if left_out:
        shown = ", ".join(left_out[:5]) + (f", ... ({len(left_out)} in all)" if len(left_out) > 5 else "")
        warnings.warn(
            f"{len(left_out)} of the model's {len(trainable)} trainable parameters are not in the optimizer and "
            f"will not train: {shown}; add them, or set requires_grad=False on those meant to stay fixed",
            stacklevel=3,
        )


def check_epochs(epochs: Any) -> None:
    """`fit(epochs=...)`: a positive int."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise TrainerError(f"epochs must be a positive int, got {epochs!r}")


def check_loader(loader: Any, name: str, reiterable: bool = False) -> None:
    """An iterable of batches that is not known to be empty; with `reiterable`, not a one-shot iterator."""
    if isinstance(loader, (str, bytes)) or not isinstance(loader, Iterable):
        raise TrainerError(f"{name} must be an iterable of batches such as a DataLoader, got {type(loader).__name__}")
    if reiterable and isinstance(loader, Iterator):
        raise TrainerError(
            f"{name} is a one-shot iterator ({type(loader).__name__}): fit reads the loaders once before training "
            "and again every epoch, and an iterator is empty after one pass. Pass a DataLoader, a list of "
            "batches, or an object whose __iter__ returns a fresh iterator each time"
        )
    if len_or_none(loader) == 0:
        raise TrainerError(
            f"{name} is empty (0 batches); check the dataset path and that batch_size <= dataset size "
            "when drop_last=True"
        )


def check_train_batches(trainer: Trainer, loader: Any) -> None:
    """A training DataLoader with batches of one sample, which a BatchNorm in training cannot use.

    A last batch of one sample is refused whenever a BatchNorm trains (it fails at the end
    of the first epoch, "Expected more than 1 value per channel", and saves nothing; the
    fix is `drop_last`). Batches that all hold one sample (`batch_size=1`, or one sample in
    all) are refused where they would fail: when a BatchNorm in training mode sees a single
    value per channel for one sample (after global pooling, or a 1x1 map), found by one
    forward of the first batch in eval mode, on a forked RNG. The dataset's size is read
    for one process, where the batches are the DataLoader's own.
    """
    if not isinstance(loader, torch.utils.data.DataLoader):
        return
    size, num_processes = loader.batch_size, trainer.accelerator.num_processes
    try:
        samples: int | None = len(loader.dataset) if num_processes == 1 else None  # type: ignore[arg-type]
    except TypeError:  # torch's Dataset declares no __len__
        samples = None
    if not size:
        return
    training_norms = [
        (name, m) for name, m in trainer.unwrapped_model.named_modules() if isinstance(m, BATCH_NORMS) and m.training
    ]
    if not training_norms:
        return
    if samples is not None and samples > size and samples % size == 1 and not loader.drop_last:
        raise TrainerError(
            f"train_loader's last batch holds 1 sample ({samples} samples, batch_size {size}), and BatchNorm "
            "cannot train on one sample; pass drop_last=True to the DataLoader, or change the batch size"
        )
    if size == 1:
        why = "every batch of train_loader holds 1 sample (batch_size 1; --batch-size)"
    elif samples == 1:
        why = "train_loader holds 1 sample in all (--train-samples, --val-split)"
    else:
        return
    single = _single_value_norms(trainer, loader, training_norms)
    if single:
        shown = ", ".join(single[:3]) + (f" and {len(single) - 3} more" if len(single) > 3 else "")
        layers, see = ("layers", "see") if len(single) > 1 else ("layer", "sees")
        raise TrainerError(
            f"{why}, and BatchNorm {layers} {shown} {see} a single value per channel for one sample (after "
            "pooling, or a 1x1 map): no batch statistics in training ('Expected more than 1 value per channel'). "
            "Train on batches of 2 or more samples (batch_size, --batch-size), with more training samples, or on "
            "larger inputs (--image-size)"
        )


def _single_value_norms(trainer: Trainer, loader: Any, norms: Sequence[tuple[str, torch.nn.Module]]) -> list[str]:
    """The BatchNorm layers of `norms` that see one value per channel for one sample of the first batch."""
    seen: dict[str, int] = {}

    def recorder(name: str) -> Callable[[torch.nn.Module, tuple[Any, ...]], None]:
        def record(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.ndim >= 2 and x.shape[0] and x.shape[1]:
                seen[name] = x[:1].numel() // x.shape[1]

        return record

    handles = [module.register_forward_pre_hook(recorder(name)) for name, module in norms]
    model = trainer.unwrapped_model  # the bare module: hooks added to a compiled one would recompile it
    try:
        with torch.no_grad(), side_forward(model, trainer.device):
            batch = next(iter(loader), None)  # on the forked RNG: a shuffled loader draws its order
            if batch is None:
                return []
            inputs, targets = trainer.unpack_batch(send_to_device(batch, trainer.device))
            trainer.forward(inputs, targets, model=model)
    except Exception:  # a batch the model cannot take: the sanity check says why
        return []
    finally:
        for handle in handles:
            handle.remove()
    return [name for name, values in seen.items() if values == 1]


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


def describe(value: Any) -> str:
    """A short description of a batch part: shape and dtype of tensors, types of containers."""
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in list(value.items())[:4]) + "}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else "(no message)"


def _hint(exc: BaseException, trainer: Trainer, inputs: Any) -> str:
    """What usually causes such an error, in the words of the fix users need."""
    text = str(exc)
    if trainer.loss_fn is not None and not isinstance(inputs, Mapping):
        try:  # the error path only: did the model work, and return something loss_fn cannot take?
            outputs = trainer.model(inputs)
        except Exception:
            outputs = None
        if isinstance(outputs, (tuple, list, Mapping)):
            return (
                f"The model returns {describe(outputs)}, not a tensor, and loss_fn gets it as is: give the "
                "model's logits to the loss (e.g. loss_fn=lambda out, y: F.cross_entropy(out['logits'], y)) "
                "or override Trainer.forward"
            )
    if "out of bounds" in text or isinstance(exc, IndexError) or "device-side assert" in text:
        return "Targets must be class indices from 0 to the number of outputs - 1; check the labels and the head size"
    if "dtype" in text or "Double" in text or "scalar type" in text:
        return "The inputs' dtype must match the model's (usually float32): convert them, e.g. x.float()"
    if any(word in text.lower() for word in ("size", "shape", "height", "width")):
        return (
            "Check that the input size is one the model accepts (--image-size; ViTs need their "
            "training size, e.g. 224 for vit_b_16)"
        )
    return "Run one batch through the model and the loss by hand to see where it fails"


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
        try:
            loss, outputs = trainer.forward(inputs, targets)
        except CallbacksKitError:
            raise
        except Exception as exc:  # the model or the loss cannot take this batch: say so in one line
            if is_peer_failure(exc):  # DDP's forward waited for a process that had died: not this batch's fault
                raise PeerProcessError(peer_failure_message(exc)) from exc
            raise TrainerError(
                f"the first batch fails in the model or the loss: {type(exc).__name__}: {_first_line(exc)}. "
                f"The batch: inputs {describe(inputs)}, targets {describe(targets)}. {_hint(exc, trainer, inputs)}"
            ) from exc
        check_loss(loss, need_grad=False)
        for name, fn in trainer.metrics.items():
            if is_stateful_metric(fn):
                check_metric_object(name, fn, outputs, targets)
                continue
            if not callable(fn):
                raise TrainerError(
                    f"metric {name!r} is a {type(fn).__name__}: pass a function (outputs, targets) -> tensor, or an "
                    "object with update/compute/reset such as a torchmetrics Metric"
                )
            value = fn(outputs, targets)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise TrainerError(
                    f"metric {name!r} returned {type(value).__name__} "
                    f"{tuple(value.shape) if isinstance(value, torch.Tensor) else ''}; "
                    "a metric must return a one-element tensor (the batch mean)"
                )


def check_metric_object(name: str, metric: StatefulMetric, outputs: Any, targets: Any) -> None:
    """Update, compute and reset a metric object on the sanity batch: it must take it and give one number."""
    try:
        metric.update(outputs, targets)
        value = compute_gathered(metric)
    except Exception as exc:
        raise TrainerError(
            f"metric {name!r} ({type(metric).__name__}) cannot take the first batch: {type(exc).__name__}: "
            f"{_first_line(exc)}. It is updated with (outputs, targets): outputs {describe(outputs)}, "
            f"targets {describe(targets)}"
        ) from exc
    finally:
        metric.reset()
    if not (isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1)):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise TrainerError(
            f"metric {name!r} ({type(metric).__name__}) computes {shape}; val/{name} needs one number: average it "
            "(e.g. torchmetrics' average='macro') or log the per-class values from a callback (ClassReport)"
        )
