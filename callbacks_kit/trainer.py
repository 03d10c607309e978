"""The Trainer: one readable Accelerate loop that fires callback events.

`fit` runs epochs; `_train_epoch` runs batches; `_train_step` is one forward, backward
and optimizer step; `validation.validate` sums the loss and metrics on the device. Input checks live
in `checks.py`, the Accelerator and process-group helpers in `distributed.py`, resuming in
`checkpoint/restore.py` and the loop's side of it in `epoch_batches.py`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from torch import nn

from callbacks_kit.batches import batch_size, len_or_none
from callbacks_kit.callbacks.base import Callback, CallbackList
from callbacks_kit.callbacks.progress_bar import ProgressBar
from callbacks_kit.checkpoint.restore import restore_training
from callbacks_kit.checkpoint.shared_folder import check_shared_folders
from callbacks_kit.checks import (
    check_epochs,
    check_loader,
    check_loss,
    check_model_and_optimizer,
    check_options,
    check_train_batches,
    extract_loss,
    sanity_check,
)
from callbacks_kit.compat import compiled_inner
from callbacks_kit.distributed import (
    HostAgreement,
    OptimizerCalls,
    PreparedLoaders,
    SkippedSteps,
    rewrap_ddp,
    set_up_process,
)
from callbacks_kit.epoch_batches import EpochBatches
from callbacks_kit.errors import TrainerError
from callbacks_kit.metrics import Metric, metrics_on
from callbacks_kit.norms import total_grad_norm
from callbacks_kit.state import EpochSamples, LossSums, ResumePoint, TrainState
from callbacks_kit.train_log import TrainLog
from callbacks_kit.validation import validate

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


class Trainer:
    """A minimal event-driven trainer on Hugging Face Accelerate.

    Args:
        model: The model. Its outputs go to `loss_fn(outputs, targets)`.
        optimizer: An optimizer over the model's parameters.
        loss_fn: `(outputs, targets) -> scalar tensor`. None means the model computes the
            loss itself: it is called as `model(inputs, targets)` (or `model(**batch)` for a
            dict batch) and returns a scalar tensor, or a mapping/object with a `loss`.
        metrics: Names to `(outputs, targets) -> tensor` callables computed at validation,
            e.g. `{"accuracy": callbacks_kit.accuracy}`; logged as `val/<name>`. A value may
            also be a metric object with `update`/`compute`/`reset` (a `torchmetrics.Metric`,
            moved to the device): reset at each validation start, updated with each batch
            gathered from every process (each sample once), computed once at the end without
            a sync of its own. Its `compute()` must give one number.
        callbacks: Callbacks to fire; a `ProgressBar` is added unless `progress_bar=False`.
        mixed_precision: "no", "fp16" (CUDA only) or "bf16".
        gradient_accumulation_steps: Batches per optimizer step.
        max_grad_norm: Clip the gradient norm to this value on optimizer steps.
        cpu: Force the CPU even when a GPU is present.
        seed: Seeds Python, NumPy and torch on every process (data order, dropout).
        log_every_n_steps: How often (in optimizer steps) the host reads the running loss.
        accelerator: Use this Accelerator instead of building one.
        progress_bar: Add the default tqdm progress bar and per-epoch summary line.
        compile: Compile the model (only the model) with `torch.compile`, after `prepare` (so
            around DDP): True, or a dict of its keyword arguments (`{"mode": "max-autotune"}`);
            `unwrapped_model` stays the uncompiled module, for hooks and probe forwards.
        deterministic: Deterministic kernels for the whole process (`distributed.make_deterministic`),
            so that a resumed run on a GPU repeats an uninterrupted one bit for bit; an
            operation with no deterministic kernel raises, or warns with `"warn"`. On a CPU
            resume is exact without it.

    Supported strategies: one process, or several with DDP. FSDP, DeepSpeed and Megatron-LM
    Accelerators are refused with a `TrainerError`.

    Attributes:
        state: Progress and latest metrics (`TrainState`).
        model, optimizer, accelerator: As prepared by Accelerate.
        train_loader, val_loader: The prepared loaders of the current `fit`.
        loss_sums: The running training-loss sums of the current epoch (`LossSums`).
        last_inputs, last_targets, last_outputs, last_loss: The latest batch.
        epoch_samples: Samples of the epoch's order trained so far, over all processes (`EpochSamples`).
        grad_norm: The global L2 norm of the gradients (unscaled, before clipping) of the
            latest optimizer step that logs, or of every step when clipping is on (the
            clipping computes it anyway); a device scalar, read at log steps as
            `train/grad_norm`. None before the first.
        tb_writer: The run's SummaryWriter, set by `TensorBoardLogger` on the main process.
        exception: What `fit` is leaving on, during `on_exception` and `on_teardown`.
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
        deterministic: bool | str = False,
    ) -> None:
        check_options(mixed_precision, gradient_accumulation_steps, max_grad_norm, log_every_n_steps, cpu)
        check_model_and_optimizer(model, optimizer)
        accelerator = set_up_process(
            mixed_precision, gradient_accumulation_steps, cpu, seed, deterministic, accelerator
        )
        self.deterministic = deterministic
        self.accelerator = accelerator
        self.loss_fn = loss_fn
        self.metrics: dict[str, Metric] = metrics_on(accelerator.device, metrics or {})
        self.max_grad_norm = max_grad_norm
        self.log_every_n_steps = log_every_n_steps
        self.seed = seed
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        if compile and compiled_inner(self.model) is None:
            self.model = torch.compile(self.model, **({} if compile is True else dict(compile)))
        self.callbacks = CallbackList(callbacks)
        if progress_bar and not self.callbacks.find(ProgressBar):
            self.callbacks.append(ProgressBar())
        self.state = TrainState()
        self.loss_sums: LossSums | None = None
        self.epoch_samples = EpochSamples()
        self.tb_writer: SummaryWriter | None = None
        self.exception: BaseException | None = None
        self.train_loader: Any = None
        self.val_loader: Any = None
        # The latest batch, kept so callbacks can look at it without the loop returning it.
        self.last_inputs: Any = None
        self.last_targets: Any = None
        self.last_outputs: Any = None
        self.last_loss: torch.Tensor | None = None
        self.grad_norm: torch.Tensor | None = None
        self._loaders = PreparedLoaders(accelerator)
        self._agreement = HostAgreement(accelerator.num_processes)
        self._skipped = SkippedSteps(accelerator, self.optimizer)
        self._optimizer_calls = OptimizerCalls(accelerator, self.optimizer)  # made again by `fit`
        self._checked_first_step = False
        self._unwrapped: tuple[nn.Module, nn.Module] | None = None  # (self.model, its unwrapped model)

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
        model = self.model
        if self._unwrapped is None or self._unwrapped[0] is not model:
            # Recent Accelerate keeps the compile wrapper unless told not to (keep_torch_compile). Kept per
            # wrapper: `unwrap_model` walks every submodule looking for compiled ones (1 ms on a ResNet-18).
            self._unwrapped = (model, self.accelerator.unwrap_model(compiled_inner(model) or model))
        return self._unwrapped[1]

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

    def forward(self, inputs: Any, targets: Any, model: nn.Module | None = None) -> tuple[torch.Tensor, Any]:
        """Run the model and the loss; returns `(loss, outputs)`.

        Args:
            inputs: The batch's inputs (a dict is passed as keyword arguments).
            targets: The batch's targets.
            model: The module to call; None is `self.model`. Probes (Grad-CAM, feature maps)
                pass the bare `unwrapped_model`, so an override keeps this argument and
                their views show what training computes.
        """
        model = self.model if model is None else model
        if self.loss_fn is None:
            raw = model(**inputs) if isinstance(inputs, Mapping) else model(inputs, targets)
            return extract_loss(raw), raw
        outputs = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
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
            resume_from: "last" or "auto" (the same: the newest checkpoint in the `ModelCheckpoint`'s
                folder, a fresh start when it has none), or a checkpoint folder written by `ModelCheckpoint`.
                Another number of processes or batch size resumes at the same sample (docs/scaling.md).

        Returns:
            The final `TrainState`.
        """
        check_epochs(epochs)
        check_loader(train_loader, "train_loader", reiterable=True)
        check_train_batches(self, train_loader)
        if val_loader is not None:
            check_loader(val_loader, "val_loader", reiterable=True)
        self.train_loader = self._loaders.prepare(train_loader)
        self.val_loader = self._loaders.prepare(val_loader) if val_loader is not None else None
        self.state = TrainState(max_epochs=epochs, batches_per_epoch=len_or_none(self.train_loader))
        self.exception = None
        sanity_check(self, val_loader if val_loader is not None else train_loader)
        check_shared_folders(self.accelerator, [c.checkpoint_dir for c in self.callbacks])  # several processes
        folder = self.callbacks.checkpoint_dir()  # where resume_from="last" looks
        resume = restore_training(self, resume_from, folder) if resume_from is not None else None
        self._skipped.reset()  # the scaler may have been restored
        self._optimizer_calls = OptimizerCalls(self.accelerator, self.optimizer)
        ended = False
        log = TrainLog(self.accelerator, self.state)
        try:
            self.callbacks.fire("on_fit_start", self)
            while self.state.epoch < epochs and not self.state.should_stop:
                epoch_start = time.perf_counter()
                if not self._train_epoch(resume, log):
                    break
                resume = None
                if self.val_loader is not None:
                    validate(self, self.val_loader, prefix="val")
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
            if not ended:  # an exit raised from on_fit_end (PreemptionHandler's) ends a finished run
                self.callbacks.fire("on_exception", self)
            raise
        finally:
            self._teardown()
        return self.state

    @torch.no_grad()
    def evaluate(self, loader: Iterable[Any], prefix: str = "val", model: nn.Module | None = None) -> dict[str, float]:
        """Loss and metrics over `loader`, each sample counted once across processes.

        Args:
            loader: The batches.
            prefix: Tag prefix of the results (`state.validation_prefix` during the run).
            model: The module to evaluate; None is the trained model. The EMA callback passes
                its averaged copy.

        Returns:
            `{f"{prefix}/loss": ..., f"{prefix}/<metric>": ...}`; also stored in `state.metrics`.
        """
        check_loader(loader, "loader")
        return validate(self, self._loaders.prepare(loader), prefix=prefix, model=model)

    def print(self, *args: Any) -> None:
        """Print once, from the main process."""
        self.accelerator.print(*args)

    def refresh_trainable(self) -> None:
        """Make DDP all-reduce exactly the parameters that now have `requires_grad=True`.

        Call it on every process at the same point, between optimizer steps, after changing
        `requires_grad` (`FreezeUnfreeze` does); without DDP it does nothing. See
        `distributed.rewrap_ddp` for why DDP must be rebuilt.
        """
        self.model = rewrap_ddp(self.accelerator, self.model)

    # ----------------------------------------------------------------------------- the loop
    def _train_epoch(self, resume: ResumePoint | None, log: TrainLog) -> bool:
        """One pass over the training data; False when a stop was agreed mid-epoch.

        A resumed epoch goes on after the batches already trained, or with the samples it
        has left in another layout, from the saved RNG states and loss sums (`EpochBatches`).
        `log` times the wait for each batch and reads the training values at log steps and
        at the end.
        """
        state = self.state
        state.stage = "train"
        self.model.train()
        epoch = EpochBatches(self, resume)
        self.callbacks.fire("on_epoch_start", self)
        loader = epoch.batches()
        self.loss_sums = sums = epoch.loss_sums()
        # With one batch per step, accumulate() only sets sync_gradients=True again on every
        # batch, for ~20 us (a few % of a small model's step): set it once instead.
        accumulating = self.accelerator.gradient_accumulation_steps > 1
        if not accumulating:
            self.accelerator.sync_gradients = True
        log.start_epoch()
        for state.batch_idx, batch in enumerate(log.batches(loader), start=epoch.start):
            epoch.starting()
            self.callbacks.fire("on_train_batch_start", self)
            self.last_inputs, self.last_targets = self.unpack_batch(batch)
            self.callbacks.fire("on_before_forward", self)  # may replace the batch (MixUp)
            inputs, targets = self.last_inputs, self.last_targets
            loss, outputs = self._train_step(inputs, targets, accumulating)
            self.last_inputs, self.last_targets, self.last_outputs, self.last_loss = inputs, targets, outputs, loss
            sums.add(loss)
            log.add(batch_size(inputs, targets))
            epoch.trained()
            state.is_log_step = False
            if state.optimizer_stepped:
                state.global_step += 1
                if state.global_step % self.log_every_n_steps == 0:
                    log.log(sums, self.grad_norm)
            self.callbacks.fire("on_train_batch_end", self)
            state.is_log_step = False
            if self._agree_to_stop():
                return False
        epoch.finish()
        log.end_epoch(sums, epoch.resumed)  # train/epoch_loss, the epoch's wait for data
        return True

    def _train_step(self, inputs: Any, targets: Any, accumulating: bool) -> tuple[torch.Tensor, Any]:
        """Forward and backward; the optimizer step when the accumulation is complete. Returns the detached loss."""
        accelerator, state = self.accelerator, self.state
        with accelerator.accumulate(self.model) if accumulating else contextlib.nullcontext():
            loss, outputs = self.forward(inputs, targets)
            if not self._checked_first_step:
                check_loss(loss)
                self._checked_first_step = True
            accelerator.backward(loss)
            state.optimizer_stepped = accelerator.sync_gradients
            if state.optimizer_stepped:
                accelerator.unscale_gradients()
                self.callbacks.fire("on_after_backward", self)
                if self.max_grad_norm is not None:
                    # Already unscaled above: Accelerate's clip_grad_norm_ would unscale a second time.
                    self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
                elif (state.global_step + 1) % self.log_every_n_steps == 0:  # this step logs: train/grad_norm
                    self.grad_norm = total_grad_norm(self.model.parameters())
                self._skipped.before_step()
                # Not on accumulation batches, where Accelerate's step and zero_grad do nothing.
                self._optimizer_calls.step()
                state.step_skipped = self._skipped.after_step()
                self._optimizer_calls.zero_grad()
            else:
                state.step_skipped = False
        return loss.detach(), outputs

    # ----------------------------------------------------------------------------- helpers
    def _agree_to_stop(self) -> bool:
        """`state.should_stop` on any process stops every process at the same boundary."""
        self.state.should_stop = self._agreement.any(self.state.should_stop)
        return self.state.should_stop

    def _teardown(self) -> None:
        """`on_teardown` for every callback; its errors surface unless `fit` is already failing."""
        try:
            self.callbacks.fire_all("on_teardown", self)
        except BaseException:
            if self.exception is None:
                raise
