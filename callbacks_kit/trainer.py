"""The Trainer: one readable Accelerate loop that fires callback events."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DataLoaderConfiguration, DistributedType, send_to_device, set_seed
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
        self.loss_fn = loss_fn
        self.metrics: dict[str, Metric] = dict(metrics or {})
        self.max_grad_norm = max_grad_norm
        self.log_every_n_steps = log_every_n_steps
        self.seed = seed
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
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
        self._prepared_loaders: dict[int, Any] = {}
        self._resume_batches = 0
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
        return self.accelerator.unwrap_model(self.model)

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
            from callbacks_kit.checkpoint_io import restore_training

            restore_training(self, resume_from)
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
            self.callbacks.fire("on_fit_end", self)
        except BaseException as exc:
            self.exception = exc
            self.state.stage = "idle"
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

    # ----------------------------------------------------------------------------- the loop
    def _train_epoch(self) -> bool:
        """One pass over the training data; False when a stop was agreed mid-epoch."""
        state, accelerator = self.state, self.accelerator
        state.stage = "train"
        self.model.train()
        self.callbacks.fire("on_epoch_start", self)
        loader, start = self.train_loader, 0
        if self._resume_batches:
            loader, start = accelerator.skip_first_batches(loader, self._resume_batches), self._resume_batches
            self._resume_batches = 0
        # One running sum on the device; the interval's loss is its difference to the last log.
        epoch_loss = torch.zeros((), device=self.device)
        logged_loss = torch.zeros((), device=self.device)
        interval_batches = epoch_batches = interval_samples = 0
        interval_start = time.perf_counter()
        for state.batch_idx, batch in enumerate(loader, start=start):
            self.callbacks.fire("on_train_batch_start", self)
            inputs, targets = self.unpack_batch(batch)
            with accelerator.accumulate(self.model):
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
            self.callbacks.fire("on_train_batch_end", self)
            state.is_log_step = False
            if self._agree_to_stop():
                return False
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
        """`state.should_stop` on any process stops every process at the same boundary."""
        if self.accelerator.num_processes == 1:
            return self.state.should_stop
        if self.state.should_stop:
            self.accelerator.set_trigger()
        if self.accelerator.check_trigger():
            self.state.should_stop = True
        return self.state.should_stop

    def _prepare_loader(self, loader: Any) -> Any:
        if not isinstance(loader, DataLoader):
            return loader
        key = id(loader)
        if key not in self._prepared_loaders:
            self._prepared_loaders[key] = self.accelerator.prepare(loader)
        return self._prepared_loaders[key]

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
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
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
