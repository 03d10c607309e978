"""The Trainer: one readable Accelerate loop that fires callback events."""

from __future__ import annotations

import atexit
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DataLoaderConfiguration, DistributedType, is_compiled_module, send_to_device, set_seed
from torch import nn
from torch.utils.data import DataLoader

from callbacks_kit.callbacks.base import Callback, CallbackList
from callbacks_kit.state import TrainState

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

Metric = Callable[[Any, Any], torch.Tensor]
MIXED_PRECISION = ("no", "fp16", "bf16")


class TrainerError(ValueError):
    """Bad input found before (or at the very first step of) training."""


class Trainer:
    """A minimal event-driven trainer on Hugging Face Accelerate.

    Args:
        model: The model. Its outputs go to `loss_fn(outputs, targets)`.
        optimizer: An optimizer over the model's parameters.
        loss_fn: `(outputs, targets) -> scalar tensor`. None means the model computes the
            loss itself: it is called as `model(inputs, targets)` (or `model(**batch)` for a
            dict batch) and returns a scalar tensor, or a mapping/object with a `loss`.
        metrics: Names to `(outputs, targets) -> tensor` callables computed at validation,
            e.g. `{"accuracy": callbacks_kit.accuracy}`; logged as `val/<name>`.
        callbacks: Callbacks to fire; a `ProgressBar` is added unless `progress_bar=False`.
        mixed_precision: "no", "fp16" (CUDA only) or "bf16".
        gradient_accumulation_steps: Batches per optimizer step.
        max_grad_norm: Clip the gradient norm to this value on optimizer steps.
        cpu: Force the CPU even when a GPU is present.
        seed: Seeds Python, NumPy and torch on every process (data order, dropout).
        log_every_n_steps: How often (in optimizer steps) the host reads the running loss.
        accelerator: Use this Accelerator instead of building one.
        progress_bar: Add the default tqdm progress bar and per-epoch summary line.
        compile: Compile the model with `torch.compile`: True, or a dict of its keyword
            arguments (e.g. `{"mode": "max-autotune"}`). It is compiled after `prepare`
            (so around DDP), as Accelerate's own dynamo option does; a model that
            Accelerate already compiled is left alone. Only the model is compiled, not the
            loss or the loop; `unwrapped_model` stays the uncompiled module, for hooks and
            probe forwards.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        *,
        metrics: Mapping[str, Metric] | None = None,
        callbacks: Iterable[Callback] = (),
        mixed_precision: str = "no",
        gradient_accumulation_steps: int = 1,
        max_grad_norm: float | None = None,
        cpu: bool = False,
        seed: int | None = None,
        log_every_n_steps: int = 50,
        accelerator: Accelerator | None = None,
        progress_bar: bool = True,
        compile: bool | Mapping[str, Any] = False,
    ) -> None:
        _check_options(mixed_precision, gradient_accumulation_steps, max_grad_norm, log_every_n_steps, cpu)
        if not isinstance(model, nn.Module):
            raise TrainerError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TrainerError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if seed is not None:
            set_seed(seed)
        if accelerator is None:
            accelerator = _build_accelerator(mixed_precision, gradient_accumulation_steps, cpu)
        self.accelerator = accelerator
        if accelerator.num_processes > 1:
            atexit.unregister(_destroy_process_group)  # once, however many trainers a script builds
            atexit.register(_destroy_process_group)
        self.loss_fn = loss_fn
        self.metrics: dict[str, Metric] = dict(metrics or {})
        self.max_grad_norm = max_grad_norm
        self.log_every_n_steps = log_every_n_steps
        self.seed = seed
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        if compile and not is_compiled_module(self.model):
            self.model = torch.compile(self.model, **({} if compile is True else dict(compile)))
        self.callbacks = CallbackList(callbacks)
        if progress_bar:
            from callbacks_kit.callbacks.progress import ProgressBar

            if not self.callbacks.find(ProgressBar):
                self.callbacks.append(ProgressBar())
        self.state = TrainState()
        self.tb_writer: SummaryWriter | None = None  # set by TensorBoardLogger on the main process
        self.exception: BaseException | None = None
        self.train_loader: Any = None
        self.val_loader: Any = None
        # The latest batch, kept so callbacks can look at it without the loop returning it.
        self.last_inputs: Any = None
        self.last_targets: Any = None
        self.last_outputs: Any = None
        self.last_loss: torch.Tensor | None = None
        # id -> (loader, prepared): holding the loader keeps its id from being reused by a new one.
        self._prepared_loaders: dict[int, tuple[Any, Any]] = {}
        self._stop_group: Any = None  # created on first use, on every process at the same point
        self._resume_batches = 0
        # Set by callbacks_kit.resume: puts back the saved RNG states at the right moment.
        self._resume_rng: Callable[[], None] | None = None
        # The epoch's running loss sums (epoch, at last log, batches, batches since log), which
        # a mid-epoch checkpoint saves and a resume starts from, so train/* metrics match too.
        self._loss_sums: tuple[torch.Tensor, torch.Tensor, int, int] | None = None
        self._resume_loss_sums: tuple[float, float, int, int] | None = None
        self._checked_first_step = False

    # ----------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        """The device this process trains on."""
        return self.accelerator.device

    @property
    def is_main_process(self) -> bool:
        """True on the one process that writes logs and files."""
        return self.accelerator.is_main_process

    @property
    def unwrapped_model(self) -> nn.Module:
        """The user's model without DDP or compile wrappers (for hooks and saving)."""
        # Recent Accelerate keeps the compile wrapper unless told not to (keep_torch_compile).
        model = self.model._orig_mod if is_compiled_module(self.model) else self.model
        return self.accelerator.unwrap_model(model)

    # ----------------------------------------------------------------------------- overridable
    def unpack_batch(self, batch: Any) -> tuple[Any, Any]:
        """Split a batch into `(inputs, targets)`. Override this for other batch shapes.

        The default takes a 2-item tuple or list, or a dict (the whole dict is passed to
        the model as keyword arguments and targets are None).
        """
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            return batch[0], batch[1]
        if isinstance(batch, Mapping):
            return batch, None
        shape = f"a {type(batch).__name__}" + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else "")
        raise TrainerError(
            f"cannot unpack a batch that is {shape}; the default expects (inputs, targets) or a dict. "
            "Subclass Trainer and override `unpack_batch(self, batch) -> (inputs, targets)`."
        )

    def forward(self, inputs: Any, targets: Any) -> tuple[torch.Tensor, Any]:
        """Run the model and the loss; returns `(loss, outputs)`."""
        if self.loss_fn is None:
            raw = self.model(**inputs) if isinstance(inputs, Mapping) else self.model(inputs, targets)
            return _extract_loss(raw), raw
        outputs = self.model(**inputs) if isinstance(inputs, Mapping) else self.model(inputs)
        return self.loss_fn(outputs, targets), outputs

    # ----------------------------------------------------------------------------- public API
    def fit(
        self,
        train_loader: Iterable[Any],
        val_loader: Iterable[Any] | None = None,
        epochs: int = 1,
        resume_from: str | None = None,
    ) -> TrainState:
        """Train for `epochs` epochs, validating after each one when `val_loader` is given.

        Args:
            train_loader: Training batches (a DataLoader; it is prepared by Accelerate).
            val_loader: Validation batches, or None.
            epochs: Total number of epochs, counting those of a resumed run.
            resume_from: "last" or a checkpoint folder written by `ModelCheckpoint`.

        Returns:
            The final `TrainState`.
        """
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise TrainerError(f"epochs must be a positive int, got {epochs!r}")
        _check_loader(train_loader, "train_loader")
        if val_loader is not None:
            _check_loader(val_loader, "val_loader")
        self.train_loader = self._prepare_loader(train_loader)
        self.val_loader = self._prepare_loader(val_loader) if val_loader is not None else None
        self.state = TrainState(max_epochs=epochs, batches_per_epoch=_len_or_none(self.train_loader))
        self.exception = None
        self._sanity_check(val_loader if val_loader is not None else train_loader)
        if resume_from is not None:
            from callbacks_kit.resume import restore_training

            restore_training(self, resume_from)
        ended = False
        try:
            self.callbacks.fire("on_fit_start", self)
            while self.state.epoch < epochs and not self.state.should_stop:
                epoch_start = time.perf_counter()
                finished = self._train_epoch()
                if not finished:
                    break
                if self.val_loader is not None:
                    self._validate(self.val_loader, prefix="val")
                self.state.metrics["perf/epoch_time_s"] = time.perf_counter() - epoch_start
                self.callbacks.fire("on_epoch_end", self)
                self._agree_to_stop()
                self.state.epoch += 1
                self.state.batch_idx = 0
            self.state.stage = "idle"
            ended = True
            self.callbacks.fire("on_fit_end", self)
        except BaseException as exc:
            self.exception = exc
            self.state.stage = "idle"
            if not ended:  # raised by an on_fit_end callback (PreemptionHandler's exit): fit had ended
                self.callbacks.fire("on_exception", self)
            raise
        finally:
            self._close_writer()
        return self.state

    @torch.no_grad()
    def evaluate(self, loader: Iterable[Any], prefix: str = "val") -> dict[str, float]:
        """Loss and metrics over `loader`, each sample counted once across processes.

        Returns:
            `{f"{prefix}/loss": ..., f"{prefix}/<metric>": ...}`; also stored in `state.metrics`.
        """
        _check_loader(loader, "loader")
        return self._validate(self._prepare_loader(loader), prefix=prefix)

    def print(self, *args: Any) -> None:
        """Print once, from the main process."""
        self.accelerator.print(*args)

    def refresh_trainable(self) -> None:
        """Make DDP all-reduce exactly the parameters that now have `requires_grad=True`.

        DDP fixes that set when it wraps the model: a parameter frozen later crashes the next
        backward ("Expected to have finished reduction"), and one unfrozen later is never
        reduced, so the replicas drift apart. This rewraps the same module with the same
        settings (parameters are broadcast from process 0). Call it on every process at the
        same point, between optimizer steps, after changing `requires_grad`; without DDP it
        does nothing.
        """
        from torch.nn.parallel import DistributedDataParallel as DDP

        old = self.model
        if not isinstance(old, DDP):
            if isinstance(getattr(old, "_orig_mod", None), DDP):
                raise TrainerError("freezing or unfreezing under DDP with torch.compile is not supported")
            return
        if not any(p.requires_grad for p in old.module.parameters()):
            raise TrainerError("every parameter is frozen: nothing left to train; unfreeze at least the head")
        handler = self.accelerator.ddp_handler
        old._remove_autograd_hooks()  # the old reducer must not see the next backward
        new = DDP(
            old.module,
            device_ids=old.device_ids,
            output_device=old.output_device,
            **(handler.to_kwargs() if handler is not None else {}),
        )
        if handler is not None:
            handler.register_comm_hook(new)
        new.train(old.training)
        new._is_accelerate_prepared = True
        self.accelerator._models = [new if m is old else m for m in self.accelerator._models]
        self.model = new

    # ----------------------------------------------------------------------------- the loop
    def _train_epoch(self) -> bool:
        """One pass over the training data; False when a stop was agreed mid-epoch."""
        state, accelerator = self.state, self.accelerator
        state.stage = "train"
        self.model.train()
        restore_rng, self._resume_rng = self._resume_rng, None
        if restore_rng is not None and not self._resume_batches:
            restore_rng()  # resumed at an epoch boundary: the states the next epoch started from
            restore_rng = None
        self.callbacks.fire("on_epoch_start", self)
        loader, start = self.train_loader, 0
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(state.epoch)  # the seedable shuffle is a function of (seed, epoch), resumed or not
        if self._resume_batches:
            loader, start = accelerator.skip_first_batches(loader, self._resume_batches), self._resume_batches
            self._resume_batches = 0
        # One running sum on the device; the interval's loss is its difference to the last log.
        epoch_loss = torch.zeros((), device=self.device)
        logged_loss = torch.zeros((), device=self.device)
        interval_batches = epoch_batches = interval_samples = 0
        if self._resume_loss_sums is not None:  # resumed mid-epoch: go on from the saved sums
            saved_epoch, saved_logged, epoch_batches, interval_batches = self._resume_loss_sums
            self._resume_loss_sums = None
            epoch_loss += saved_epoch
            logged_loss += saved_logged
        # With one batch per step, accumulate() only sets sync_gradients=True again on every
        # batch, for ~20 us (a few % of a small model's step): set it once instead.
        accumulating = accelerator.gradient_accumulation_steps > 1
        if not accumulating:
            accelerator.sync_gradients = True
        interval_start = time.perf_counter()
        for state.batch_idx, batch in enumerate(loader, start=start):
            if restore_rng is not None:
                restore_rng()  # after the resumed iterator drew its base seed (DESIGN.md, "Resume")
                restore_rng = None
            self.callbacks.fire("on_train_batch_start", self)
            inputs, targets = self.unpack_batch(batch)
            with accelerator.accumulate(self.model) if accumulating else contextlib.nullcontext():
                loss, outputs = self.forward(inputs, targets)
                if not self._checked_first_step:
                    _check_loss(loss)
                    self._checked_first_step = True
                accelerator.backward(loss)
                state.optimizer_stepped = accelerator.sync_gradients
                if state.optimizer_stepped:
                    accelerator.unscale_gradients()
                    self.callbacks.fire("on_after_backward", self)
                    if self.max_grad_norm is not None:
                        self._clip_gradients()
                self.optimizer.step()  # Accelerate makes these no-ops on accumulation batches
                self.optimizer.zero_grad(set_to_none=True)
            self.last_inputs, self.last_targets, self.last_outputs = inputs, targets, outputs
            self.last_loss = loss.detach()
            epoch_loss += self.last_loss
            interval_batches += 1
            epoch_batches += 1
            n = _batch_size(inputs, targets)
            interval_samples += n
            state.samples_seen += n
            state.is_log_step = False
            if state.optimizer_stepped:
                state.global_step += 1
                if state.global_step % self.log_every_n_steps == 0:
                    elapsed = time.perf_counter() - interval_start
                    self._log_train((epoch_loss - logged_loss) / interval_batches, interval_samples, elapsed)
                    logged_loss = epoch_loss.clone()
                    interval_batches = interval_samples = 0
                    interval_start = time.perf_counter()
            self._loss_sums = (epoch_loss, logged_loss, epoch_batches, interval_batches)
            self.callbacks.fire("on_train_batch_end", self)
            state.is_log_step = False
            if self._agree_to_stop():
                return False
        if restore_rng is not None:  # resumed after the epoch's last batch: nothing was left to iterate
            restore_rng()
        if epoch_batches == 0 and start == 0:
            raise TrainerError("train_loader yielded no batches; check the dataset and batch size (drop_last?)")
        if epoch_batches:
            mean = accelerator.reduce(epoch_loss / epoch_batches, reduction="mean")
            state.metrics["train/epoch_loss"] = float(mean)
        return True

    @torch.no_grad()
    def _validate(self, loader: Any, prefix: str) -> dict[str, float]:
        """Loss and metrics summed on the device over gathered batches; read once at the end."""
        state, accelerator = self.state, self.accelerator
        previous_stage, was_training = state.stage, self.model.training
        state.stage = "validate"
        self.model.eval()
        self.callbacks.fire("on_validation_start", self)
        names = ["loss", *self.metrics]
        sums = torch.zeros(len(names), device=self.device, dtype=torch.float64)
        count = 0
        for batch in loader:
            inputs, targets = self.unpack_batch(batch)
            loss, outputs = self.forward(inputs, targets)
            if self.loss_fn is None:
                # The model made the loss: average per-process values, weighted by batch size.
                n = _batch_size(inputs, targets)
                values = [loss.detach().float() * n]
                values += [fn(outputs, targets).detach().float() * n for fn in self.metrics.values()]
                sums += accelerator.reduce(torch.stack(values).double(), reduction="sum")
                count += n * accelerator.num_processes
            else:
                outputs, targets = accelerator.gather_for_metrics((outputs, targets))
                n = _batch_size(outputs, targets)
                values = [self.loss_fn(outputs, targets).detach().float() * n]
                values += [fn(outputs, targets).detach().float() * n for fn in self.metrics.values()]
                sums += torch.stack(values).double()
                count += n
            self.last_inputs, self.last_targets, self.last_outputs = inputs, targets, outputs
            self.callbacks.fire("on_validation_batch_end", self)
        if count == 0:
            raise TrainerError(f"the {prefix} loader yielded no batches; check the dataset and batch size")
        results = {f"{prefix}/{name}": value / count for name, value in zip(names, sums.tolist(), strict=True)}
        state.metrics.update(results)
        self.callbacks.fire("on_validation_end", self)
        state.stage = previous_stage
        self.model.train(was_training)
        return results

    # ----------------------------------------------------------------------------- helpers
    def _log_train(self, mean_loss: torch.Tensor, samples: int, elapsed: float) -> None:
        """The only host read of the training loss: every `log_every_n_steps` steps."""
        loss = float(self.accelerator.reduce(mean_loss, reduction="mean"))
        self.state.metrics["train/loss"] = loss
        self.state.metrics["perf/samples_per_sec"] = samples * self.accelerator.num_processes / max(elapsed, 1e-9)
        self.state.is_log_step = True

    def _clip_gradients(self) -> None:
        assert self.max_grad_norm is not None
        if self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        else:  # already unscaled above; Accelerate's helper would unscale a second time
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)

    def _agree_to_stop(self) -> bool:
        """`state.should_stop` on any process stops every process at the same boundary.

        The flags meet in a host-side all-reduce on a gloo group: a network round trip per
        batch, but never a wait for the GPU (Accelerate's `check_trigger` reads a device tensor).
        """
        if self.accelerator.num_processes == 1:
            return self.state.should_stop
        flag = torch.tensor([int(self.state.should_stop)], dtype=torch.int32)
        torch.distributed.all_reduce(flag, group=self._host_group())
        self.state.should_stop = bool(flag[0])
        return self.state.should_stop

    def _host_group(self) -> Any:
        """The process group for host-side agreement: the default one when it is gloo already."""
        if self._stop_group is None:
            dist = torch.distributed
            default_is_gloo = dist.get_backend() == dist.Backend.GLOO
            self._stop_group = dist.group.WORLD if default_is_gloo else dist.new_group(backend="gloo")
        return self._stop_group

    def _prepare_loader(self, loader: Any) -> Any:
        if not isinstance(loader, DataLoader):
            return loader
        key = id(loader)
        if key not in self._prepared_loaders:
            self._prepared_loaders[key] = (loader, self.accelerator.prepare(loader))
        return self._prepared_loaders[key][1]

    @torch.no_grad()
    def _sanity_check(self, loader: Any) -> None:
        """Unpack one batch and run the forward, loss and metrics before any training.

        Bad batches, losses or metrics fail here in seconds instead of after an epoch. The
        global RNG state is restored so the check does not change the run.
        """
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        was_training = self.model.training
        self.model.eval()
        try:
            # The raw loader, not the prepared one: a half-read prepared loader would stay
            # registered in Accelerate's gradient state.
            batch = next(iter(loader), None)
            if batch is None:
                raise TrainerError("the loader yielded no batches; check the dataset and batch size (drop_last?)")
            inputs, targets = self.unpack_batch(send_to_device(batch, self.device))
            loss, outputs = self.forward(inputs, targets)
            _check_loss(loss, need_grad=False)
            for name, fn in self.metrics.items():
                value = fn(outputs, targets)
                if not isinstance(value, torch.Tensor) or value.numel() != 1:
                    raise TrainerError(
                        f"metric {name!r} returned {type(value).__name__} "
                        f"{tuple(value.shape) if isinstance(value, torch.Tensor) else ''}; "
                        "a metric must return a one-element tensor (the batch mean)"
                    )
        finally:
            self.model.train(was_training)
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)

    def _close_writer(self) -> None:
        if self.tb_writer is not None:
            self.tb_writer.flush()
            self.tb_writer.close()
            self.tb_writer = None


# ------------------------------------------------------------------------------------- checks
def _destroy_process_group() -> None:
    """At exit, while the interpreter is whole: gloo threads left to finalization can SIGABRT.

    A process that ends without `destroy_process_group()` sometimes dies with "terminate
    called without an active exception" after all its work is done (seen here: 1 run in ~30).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _check_options(
    mixed_precision: str, accumulation: int, max_grad_norm: float | None, log_every: int, cpu: bool
) -> None:
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


def _build_accelerator(mixed_precision: str, accumulation: int, cpu: bool) -> Accelerator:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        cpu = True  # else Accelerate sees one process in each of the launched ones, all "main"
    # One Trainer owns this process's Accelerator settings: forget those of an earlier one
    # (Accelerate refuses a second, different mixed_precision otherwise). The process group,
    # held by PartialState, is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=accumulation,
        cpu=cpu,
        # Seedable samplers make the shuffle order a function of (seed, epoch): exact resume.
        # Non-blocking copies let pinned batches (make_loader pins them on a GPU) reach the
        # device while the host goes on; from unpinned memory they are ordinary copies.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),
    )


def _check_loader(loader: Any, name: str) -> None:
    if isinstance(loader, (str, bytes)) or not isinstance(loader, Iterable):
        raise TrainerError(f"{name} must be an iterable of batches such as a DataLoader, got {type(loader).__name__}")
    if _len_or_none(loader) == 0:
        raise TrainerError(
            f"{name} is empty (0 batches); check the dataset path and that batch_size <= dataset size "
            "when drop_last=True"
        )


def _check_loss(loss: Any, need_grad: bool = True) -> None:
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


def _extract_loss(raw: Any) -> torch.Tensor:
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


def _len_or_none(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def _batch_size(inputs: Any, targets: Any) -> int:
    for item in (targets, inputs):
        if isinstance(item, torch.Tensor) and item.ndim > 0:
            return int(item.shape[0])
        if isinstance(item, Mapping):
            for value in item.values():
                if isinstance(value, torch.Tensor) and value.ndim > 0:
                    return int(value.shape[0])
        if isinstance(item, (list, tuple)) and item:
            return len(item)
    return 1
