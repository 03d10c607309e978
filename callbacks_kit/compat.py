"""Every private Accelerate, PyTorch and TensorBoard API the package relies on, in one place.

Each helper says why no public API does the job. They were checked against torch 2.14 and
accelerate 1.15; `setup.cfg` allows torch <3 and accelerate <2, and `tests/test_architecture.py`
checks that every private name used here still exists and behaves as expected, so an upgrade
that removes one fails there, loudly, instead of misbehaving in a run. No other module
touches a private attribute of an object it does not own.
"""

from __future__ import annotations

import inspect
from typing import Any

import google_crc32c
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.parallel import DistributedDataParallel

# Every BatchNorm kind (1d/2d/3d, Sync, Lazy), and every normalisation layer with running
# statistics or affine weights (BatchNorm and InstanceNorm): torch has no public base class.
BATCH_NORMS: tuple[type[_BatchNorm], ...] = (_BatchNorm,)
RUNNING_STAT_NORMS: tuple[type[_NormBase], ...] = (_NormBase,)


def reset_accelerator_singletons() -> None:
    """Forget the settings of an earlier `Accelerator` in this process, keeping the process group.

    Accelerate keeps its state in process-wide singletons and refuses a second Accelerator
    with a different `mixed_precision`; a script that builds two Trainers needs this.
    There is no public reset.
    """
    AcceleratorState._reset_state()
    GradientState._reset_state()


def swap_prepared_model(accelerator: Accelerator, old: nn.Module, new: nn.Module) -> None:
    """Make `accelerator` treat `new` as the prepared model it knows as `old`.

    Accelerate keeps the prepared models in `_models` (used by `save_state`, `unwrap_model`
    callers, `free_memory`) and marks prepared objects with `_is_accelerate_prepared`; a
    model re-wrapped by DDP after `prepare` must replace the old wrapper there.
    """
    # nn.Module.__setattr__ is annotated for tensors and modules only; any value is stored.
    new._is_accelerate_prepared = True  # type: ignore[assignment]
    accelerator._models = [new if m is old else m for m in accelerator._models]


def detach_ddp_reducer(model: DistributedDataParallel) -> None:
    """Remove the autograd hooks of a DDP wrapper that is being replaced.

    Without this the old reducer still sees the next backward and waits for gradients of
    parameters it expects, hanging or raising "Expected to have finished reduction".
    """
    model._remove_autograd_hooks()


def compiled_inner(model: nn.Module) -> nn.Module | None:
    """The module inside a `torch.compile` wrapper (`OptimizedModule._orig_mod`), else None."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else None


def nested_schedulers(scheduler: Any) -> list[Any]:
    """`scheduler` and every scheduler chained inside it (`SequentialLR`/`ChainedScheduler._schedulers`)."""
    if scheduler is None:
        return []
    inner = getattr(scheduler, "_schedulers", None) or []
    return [scheduler, *(s for child in inner for s in nested_schedulers(child))]


def scheduler_lr_lists(scheduler: Any) -> list[list[float]]:
    """The per-group LR lists a scheduler computes from: `base_lrs`, `max_lrs` and `_last_lr`.

    Scaling a group's schedule (FreezeUnfreeze's LR factors) must scale all three; the last
    one is what `get_last_lr()` returns and has no setter.
    """
    lists = [getattr(scheduler, attr, None) for attr in ("base_lrs", "max_lrs", "_last_lr")]
    return [values for values in lists if isinstance(values, list)]


def one_cycle_phase_ends(scheduler: Any) -> list[float]:
    """The `end_step` of each phase of a `OneCycleLR` (`_schedule_phases`); [] for other schedulers.

    Used to refuse, before training, a schedule with an empty phase, where PyTorch would
    divide by zero mid-run.
    """
    return [float(phase["end_step"]) for phase in getattr(scheduler, "_schedule_phases", None) or []]


def has_forward_hooks(module: nn.Module) -> bool:
    """True when `module` has forward or forward-pre hooks: nn.Module has no public accessor."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def grad_norms(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """The L2 norm of each tensor in one fused kernel (`torch._foreach_norm`), on their device."""
    return list(torch._foreach_norm(grads))


# Names tests/test_architecture.py checks still exist in the installed versions, as (owner, attribute).
PRIVATE_NAMES: tuple[tuple[Any, str], ...] = (
    (AcceleratorState, "_reset_state"),
    (GradientState, "_reset_state"),
    (DistributedDataParallel, "_remove_autograd_hooks"),
    (torch, "_foreach_norm"),
)


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C of a TFRecord (an event file's record framing), computed in C by google-crc32c."""
    crc = google_crc32c.value(data)
    return ((crc >> 15 | crc << 17) + 0xA282EAD8) & 0xFFFFFFFF


def fast_event_checksums() -> None:
    """Make TensorBoard's event writers checksum their records with `masked_crc32c`.

    Without TensorFlow installed, TensorBoard computes each record's CRC-32C in a Python loop
    over its bytes (about 12 MB/s) on the writer's thread, holding the GIL the training loop
    needs: about 0.4 s per run of the main job's 5 MB of images and histograms. The values
    are the same (tests/test_architecture.py checks them against TensorBoard's own function).
    """
    from tensorboard.summary.writer import record_writer

    record_writer.masked_crc32c = masked_crc32c


def onnx_dynamo_exporter() -> bool:
    """Whether `torch.onnx.export` takes `dynamo=True` and `external_data` (torch 2.5 on); older torch traces."""
    parameters = inspect.signature(torch.onnx.export).parameters
    return "dynamo" in parameters and "external_data" in parameters
