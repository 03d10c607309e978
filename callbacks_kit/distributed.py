"""Processes and devices: building the Accelerator, agreeing to stop on the host, re-wrapping DDP, clean exit.

The loop in `trainer.py` calls these; they hold what Accelerate and `torch.distributed`
need and nothing of the loop's own state.
"""

from __future__ import annotations

import atexit
import inspect
import os
import time
import warnings
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import DataLoaderConfiguration, DistributedType, is_lomo_available, set_seed
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from callbacks_kit.compat import compiled_inner, detach_ddp_reducer, reset_accelerator_singletons, swap_prepared_model
from callbacks_kit.cpu import cpu_forced
from callbacks_kit.errors import TrainerError


def use_cpu(requested: bool = False) -> bool:
    """Whether to train on the CPU: when asked (`cpu=True`, `--cpu` or `ACCELERATE_USE_CPU`), and always
    for a multi-process launch without a GPU.

    Without the CPU flag Accelerate sees one process in each launched one, every one of
    them "main"; with it, the processes form one gloo group.
    """
    return requested or cpu_forced() or (int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())


def best_device(cpu: bool = False) -> torch.device:
    """The best accelerator present (CUDA, then Apple MPS), else the CPU; `cpu=True` forces the CPU.

    For work on one device without Accelerate (predict, evaluate).
    """
    if not cpu and torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if not cpu and mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def process_state(cpu: bool = False) -> PartialState:
    """The place of this process in the launch (rank, world size, main process, device), from one source.

    The CLI and the Trainer (`build_accelerator` starts from it) both ask here, so they cannot
    disagree. Accelerate keeps this state once per process; the first call decides it. A bare
    `PartialState()` does not apply `use_cpu`: under torchrun on a host without a GPU,
    Accelerate 1.16 then gives every launched process a world of its own, each one "main".
    """
    return PartialState(cpu=use_cpu(cpu))


def build_accelerator(mixed_precision: str, accumulation: int, cpu: bool) -> Accelerator:
    """The Accelerator a Trainer owns: seedable samplers (exact resume) and non-blocking copies.

    One Trainer owns this process's Accelerator settings: those of an earlier one are
    forgotten (Accelerate refuses a second, different mixed_precision otherwise); the
    process group is kept.
    """
    reset_accelerator_singletons()
    process_state(cpu)  # the process group, as the CLI sees it when it asked first
    return Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=accumulation,
        cpu=use_cpu(cpu),
        # Seedable samplers make the shuffle order a function of (seed, epoch): exact resume.
        # Non-blocking copies let pinned batches (make_loader pins them on a GPU) reach the
        # device while the host goes on; from unpinned memory they are ordinary copies.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),
    )


def set_up_process(
    mixed_precision: str,
    accumulation: int,
    cpu: bool,
    seed: int | None,
    deterministic: bool | str,
    accelerator: Accelerator | None,
) -> Accelerator:
    """What a Trainer sets for its process, in order: determinism, the seed, the Accelerator (given or built).

    Determinism comes first: cuBLAS reads its workspace setting at the first CUDA matmul.
    The Accelerator's strategy is checked and the process group is ended at exit.
    """
    if deterministic not in (False, True, "warn"):
        raise TrainerError(f"deterministic must be False, True or 'warn', got {deterministic!r}")
    if deterministic:
        make_deterministic(warn_only=deterministic == "warn")
    if seed is not None:
        set_seed(seed)
    if accelerator is None:
        accelerator = build_accelerator(mixed_precision, accumulation, cpu)
    check_strategy(accelerator)
    destroy_process_group_at_exit(accelerator)
    warn_restarts_on_a_shared_store()
    return accelerator


def warn_restarts_on_a_shared_store() -> None:
    """Warn (process 0) when torchrun may restart workers that share its rendezvous store.

    Since torch 2.5 the c10d rendezvous shares its TCP store with the workers
    (`TORCHELASTIC_USE_AGENT_STORE=True`), and a restarted group may read the addresses of
    the group that failed and fail to connect (pytorch/pytorch#135712; reproduced here with
    gloo whenever a restarted process starts a few seconds after the others). Launching with
    `TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1` gives every attempt a store of its own.
    """
    env = os.environ
    restarts = env.get("TORCHELASTIC_MAX_RESTARTS", "0")
    if env.get("RANK") == "0" and env.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and restarts not in ("", "0"):
        warnings.warn(
            f"torchrun may restart this job (--max-restarts {restarts}) with its rendezvous store shared with the "
            "training processes: a restarted group can then read the failed group's addresses and fail to connect "
            "(pytorch/pytorch#135712). Launch with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 set (docs/scaling.md)",
            RuntimeWarning,
            stacklevel=3,
        )


# Strategies whose model, optimizer and gradients are sharded: the checkpoint (a full state dict
# gathered by the main process alone, a collective) would hang, and TerminateOnNaN would decide
# per rank on shards. Refused rather than half supported.
SHARDED_STRATEGIES = (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)


def check_strategy(accelerator: Accelerator) -> None:
    """Refuse the sharded strategies (FSDP, DeepSpeed, Megatron-LM): DDP is the supported one."""
    kind = accelerator.distributed_type
    if kind in SHARDED_STRATEGIES:
        raise TrainerError(
            f"the Accelerator uses {kind.value}, which callbacks_kit does not support: its checkpoints gather a "
            "full state dict on the main process alone (a collective under sharding: it would hang) and "
            "TerminateOnNaN and gradient clipping would see only this rank's shards. Launch with DDP "
            "(`accelerate launch --multi_gpu` or torchrun), the supported multi-process strategy"
        )


CUBLAS_WORKSPACE = ":4096:8"


def make_deterministic(warn_only: bool = False) -> None:
    """Deterministic kernels for this process: PyTorch's algorithms, cuDNN and cuBLAS.

    `torch.use_deterministic_algorithms(True)` (an operation without a deterministic kernel
    raises instead of running, or only warns with `warn_only`; on CUDA that includes the
    backward of `AdaptiveAvgPool2d`, which torchvision's ResNets use),
    `cudnn.deterministic=True`, `cudnn.benchmark=False`, and
    `CUBLAS_WORKSPACE_CONFIG` (set when unset; cuBLAS reads it when its first handle is
    made, so it must be set before the first CUDA matmul of the process). Process-wide
    settings, left as they are after `fit`.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def uses_fused_step(optimizer: torch.optim.Optimizer) -> bool:
    """True when a param group runs a fused kernel (`fused=True`), which skips fp16 steps itself."""
    return any(bool(group.get("fused")) for group in optimizer.param_groups)


def unwrapped_optimizer(optimizer: Any) -> Any:
    """The user's optimizer inside Accelerate's `AcceleratedOptimizer` (itself when not wrapped)."""
    return optimizer.optimizer if isinstance(optimizer, AcceleratedOptimizer) else optimizer


class OptimizerCalls:
    """The loop's `step` and `zero_grad`, past Accelerate's optimizer wrapper where it adds nothing.

    `AcceleratedOptimizer.step` asks importlib twice per call whether LOMO is installed
    (`is_lomo_available`, about 75 us a call timed alone here) and its `zero_grad` inspects
    the wrapped optimizer's signature (about 30 us): more than the rest of the loop costs a
    small model. Without a loss scaler, XLA or a LOMO optimizer, on a step with synced
    gradients (the loop calls these on no other), the wrapper's `step` and
    `zero_grad(set_to_none=True)` are the wrapped optimizer's own, so these call it
    directly. Whatever replaced the wrapper's method on the instance (an LR scheduler built
    on the wrapper does, to count its calls) is called instead, as it expects.
    """

    def __init__(self, accelerator: Accelerator, optimizer: Any) -> None:
        self.wrapper = optimizer
        self.direct = _direct(accelerator, optimizer)

    def step(self) -> None:
        """One optimizer step."""
        if self.direct is None or "step" in vars(self.wrapper):
            self.wrapper.step()
        else:
            self.direct.step()

    def zero_grad(self) -> None:
        """Drop the gradients (`set_to_none=True`)."""
        if self.direct is None or "zero_grad" in vars(self.wrapper):
            self.wrapper.zero_grad(set_to_none=True)
        else:
            self.direct.zero_grad(set_to_none=True)


def _direct(accelerator: Accelerator, optimizer: Any) -> Any:
    """The wrapped optimizer when the wrapper's step and zero_grad reduce to its own, else None."""
    if not isinstance(optimizer, AcceleratedOptimizer):
        return None
    if optimizer.scaler is not None or accelerator.distributed_type == DistributedType.XLA:
        return None  # the scaler's step and skip detection; XLA's gradient all-reduce
    inner = optimizer.optimizer
    if is_lomo_available():
        from lomo_optim import AdaLomo, Lomo  # noqa: PLC0415 (optional, as in Accelerate)

        if isinstance(inner, (AdaLomo, Lomo)):
            return None  # Accelerate makes their step a no-op
    if "set_to_none" not in inspect.signature(inner.zero_grad).parameters:
        return None
    return inner


class PreparedLoaders:
    """Each DataLoader prepared by Accelerate once, however often `fit` or `evaluate` is given it."""

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        # id -> (loader, prepared): holding the loader keeps its id from being reused by a new one.
        self.prepared: dict[int, tuple[Any, Any]] = {}

    def prepare(self, loader: Any) -> Any:
        """The prepared twin of `loader`; anything not a DataLoader, or prepared already, as it is."""
        if not isinstance(loader, DataLoader) or any(loader is done for _, done in self.prepared.values()):
            return loader  # not a DataLoader, or prepared already (`evaluate(trainer.val_loader)`: EMA)
        key = id(loader)
        if key not in self.prepared:
            self.prepared[key] = (loader, self.accelerator.prepare(loader))
        return self.prepared[key][1]


class SkippedSteps:
    """Whether the fp16 loss scaler skipped the optimizer step just taken.

    Without fused kernels, `GradScaler.step` skips by not calling `optimizer.step()`, which
    Accelerate notices (`step_was_skipped`, a host bool: no extra sync). A fused optimizer
    (`AdamW/Adam/SGD(fused=True)`) is always called and skips the update itself on the
    device, so Accelerate always reports False; then the scaler's scale, which only drops
    on a skipped step, is read after each step: one host sync per optimizer step, as the
    unfused path already pays inside `GradScaler.step`.
    """

    def __init__(self, accelerator: Accelerator, optimizer: Any) -> None:
        self.scaler = accelerator.scaler
        self.optimizer = optimizer
        self.fused = self.scaler is not None and uses_fused_step(optimizer)
        self.scale: float | None = None

    def reset(self) -> None:
        """Forget the last scale read (the scaler was restored from a checkpoint)."""
        self.scale = None

    def before_step(self) -> None:
        """Note the scale before a fused step, when it is not known yet."""
        if self.fused and self.scale is None:
            self.scale = float(self.scaler.get_scale())

    def after_step(self) -> bool:
        """True when the step just taken was skipped."""
        if self.scaler is None:
            return False
        if not self.fused:
            return bool(getattr(self.optimizer, "step_was_skipped", False))
        before, self.scale = self.scale, float(self.scaler.get_scale())
        return before is not None and self.scale < before


def destroy_process_group_at_exit(accelerator: Accelerator) -> None:
    """With several processes, end the process group at interpreter exit (see `destroy_process_group`)."""
    if accelerator.num_processes > 1:
        atexit.unregister(destroy_process_group)  # once, however many trainers a script builds
        atexit.register(destroy_process_group)


GLOO_DRAIN_S = 0.1  # far longer than a gloo worker thread needs to drop its finished work


def destroy_process_group() -> None:
    """At exit, while the interpreter is whole: end the process group, then let gloo's threads go idle.

    A gloo worker thread drops its reference to a finished collective a moment after the
    caller's wait returns. When that reference is the last one to a tensor Python made
    (Accelerate's gather buffers), dropping it takes the GIL; during interpreter
    finalization taking the GIL ends the thread with `pthread_exit`, whose unwinding through
    gloo's C++ frames calls `std::terminate`: "terminate called without an active
    exception", SIGABRT, after all the work is done (core dump in docs/design.md, about 1
    run in 40 here). `destroy_process_group` alone does not help while the group is still
    referenced (a DDP model, `dist.group` handles): its threads keep running. So the exit
    waits `GLOO_DRAIN_S` with the GIL released, while no collective can start any more.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
        time.sleep(GLOO_DRAIN_S)


class HostAgreement:
    """A flag raised on any process is seen by every process, without waiting for the GPU.

    The flags meet in a host-side all-reduce on a gloo group: a network round trip per
    call, but never a device sync (Accelerate's `check_trigger` reads a device tensor).
    The group is the default one when it is gloo already, else one made on first use,
    which every process reaches at the same point.
    """

    def __init__(self, num_processes: int) -> None:
        self.num_processes = num_processes
        self._group: Any = None

    def any(self, flag: bool) -> bool:
        """True when `flag` is True on at least one process. Every process must call it."""
        if self.num_processes == 1:
            return flag
        value = torch.tensor([int(flag)], dtype=torch.int32)
        torch.distributed.all_reduce(value, group=self._host_group())
        return bool(value[0])

    def _host_group(self) -> Any:
        if self._group is None:
            dist = torch.distributed
            default_is_gloo = dist.get_backend() == dist.Backend.GLOO
            self._group = dist.group.WORLD if default_is_gloo else dist.new_group(backend="gloo")
        return self._group


def rewrap_ddp(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """`model` re-wrapped so DDP reduces exactly the parameters that now require grad.

    DDP fixes that set when it wraps the model: a parameter frozen later crashes the next
    backward ("Expected to have finished reduction"), and one unfrozen later is never
    reduced, so the replicas drift apart. The same module is wrapped again with the same
    settings (parameters are broadcast from process 0). Returns `model` itself when it is
    not DDP.
    """
    if not isinstance(model, DistributedDataParallel):
        if isinstance(compiled_inner(model), DistributedDataParallel):
            raise TrainerError("freezing or unfreezing under DDP with torch.compile is not supported")
        return model
    if not any(p.requires_grad for p in model.module.parameters()):
        raise TrainerError("every parameter is frozen: nothing left to train; unfreeze at least the head")
    handler = accelerator.ddp_handler
    detach_ddp_reducer(model)  # the old reducer must not see the next backward
    new = DistributedDataParallel(
        model.module,
        device_ids=model.device_ids,
        output_device=model.output_device,
        **(handler.to_kwargs() if handler is not None else {}),
    )
    if handler is not None:
        handler.register_comm_hook(new)
    new.train(model.training)
    swap_prepared_model(accelerator, model, new)
    return new
