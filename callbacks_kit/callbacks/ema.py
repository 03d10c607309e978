"""EMA: an exponential moving average of the weights, validated as `val_ema/*` and saved with every checkpoint.

Built on `torch.optim.swa_utils.AveragedModel` with PyTorch's own EMA function
(`get_ema_multi_avg_fn`: one `torch._foreach_lerp_` per device and dtype, on the device).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.callbacks.batch_norm_stats import recompute_batch_norm
from callbacks_kit.choices import BUFFER_MODES as BUFFER_MODES
from callbacks_kit.compat import BATCH_NORMS
from callbacks_kit.errors import TrainerError

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class EMA(Callback):
    """Keeps `ema = decay * ema + (1 - decay) * weights` after every `every_n_steps`-th optimizer step.

    The first update copies the weights. With `warmup`, update `n` (counted from 0, the copy)
    uses `min(decay, (1 + n) / (10 + n))`, TensorFlow's `num_updates` rule: early averages
    forget the random start quickly (0.18, 0.25, 0.31... at updates 1, 2, 3) and the decay
    reaches 0.999 after about 9000 updates. Steps the fp16 scaler skipped are not averaged.

    After the regular validation the averaged weights are validated too (under the
    accelerator's autocast), logged as `<prefix>/loss` and `<prefix>/<metric>` (default
    `val_ema/*`) before `EarlyStopping` and `ModelCheckpoint` read the metrics, so either
    may monitor `val_ema/accuracy`. `validated_models()` tells the other callbacks which
    weights `<prefix>/*` measures: a `ModelCheckpoint` monitoring it exports the EMA
    weights to `best.safetensors`, and `TensorBoardLogger` charts `<prefix>/*` next to
    `val/*`. The average lives on the training device, is identical on every
    process (the weights it follows are), and its state goes into every checkpoint, so a
    resumed run averages on exactly as an uninterrupted one.

    BatchNorm buffers:
        "average" (the default, as timm's ModelEmaV3 and torchvision's reference scripts):
        running means and variances are averaged like the weights; no extra data pass.
        "recompute": the buffers follow the live model, and before each EMA validation
        the BatchNorm statistics are recomputed for the averaged weights over
        `recompute_batches` training batches (`swa_utils.update_bn`, on a forked RNG, then
        averaged across processes). Exact statistics for the averaged weights, as SWA
        needs, at the cost of those forward passes.

    Args:
        decay: Weight of the old average per update, in (0, 1).
        warmup: Ramp the decay up as above instead of using `decay` from the first update.
        every_n_steps: Update after every this many optimizer steps.
        buffers: "average" or "recompute" (see above).
        recompute_batches: Training batches per BatchNorm recomputation ("recompute" only;
            None: the whole training loader).
        validate: Validate the averaged weights after each regular validation.
        prefix: Tag prefix of that validation.

    Attributes:
        averaged: The `AveragedModel` (None before `fit` starts); `averaged.module` is the
            averaged network, e.g. for `trainer.evaluate(loader, model=ema.averaged.module)`.
        updates: Updates done so far (the first one copies).
    """

    order = Order.AVERAGE

    def __init__(
        self,
        decay: float = 0.999,
        warmup: bool = True,
        every_n_steps: int = 1,
        buffers: str = "average",
        recompute_batches: int | None = 50,
        validate: bool = True,
        prefix: str = "val_ema",
    ) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not (0 < decay < 1):
            raise TrainerError(
                f"EMA: decay must be a number strictly between 0 and 1, got {decay!r}; "
                "0.999 (about the last 1000 updates) is a common choice, 0.9999 for long runs"
            )
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise TrainerError(f"EMA: every_n_steps must be an int >= 1, got {every_n_steps!r}")
        if buffers not in BUFFER_MODES:
            raise TrainerError(f"EMA: buffers={buffers!r}; use 'average' or 'recompute'")
        if recompute_batches is not None and (not isinstance(recompute_batches, int) or recompute_batches < 1):
            raise TrainerError(f"EMA: recompute_batches must be None or an int >= 1, got {recompute_batches!r}")
        if not prefix or "/" in prefix or prefix == "val":
            raise TrainerError(f"EMA: prefix={prefix!r}; use a tag prefix of its own such as 'val_ema'")
        self.decay, self.warmup, self.every_n_steps = float(decay), warmup, every_n_steps
        self.buffers, self.recompute_batches = buffers, recompute_batches
        self.validate, self.prefix = validate, prefix
        self.averaged: AveragedModel | None = None
        self.updates = 0
        self._pending: dict[str, Any] | None = None

    # ---------------------------------------------------------------------------------- state
    @property
    def state_key(self) -> str:
        """`EMA` for the default prefix, `EMA[<prefix>]` otherwise (several EMAs can coexist)."""
        return "EMA" if self.prefix == "val_ema" else f"EMA[{self.prefix}]"

    def state_dict(self) -> dict[str, Any]:
        if self.averaged is None:
            return dict(self._pending or {})
        return {"updates": self.updates, "decay": self.decay, "weights": self.averaged.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Resuming restores the callbacks before on_fit_start, where the averaged copy is built.
        self._pending = dict(state)
        if self.averaged is not None:
            self._load(self._pending)

    def current_decay(self) -> float:
        """The decay of the next update (0 for the first one, which copies)."""
        if self.updates == 0:
            return 0.0
        return min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay

    def validated_models(self) -> dict[str, nn.Module | None]:
        """`{prefix: the averaged network}` (None before `fit` builds it): `<prefix>/*` measures these weights.

        Published whether or not `validate` is on: metrics logged under `prefix` by an
        evaluation of your own measure the same weights.
        """
        return {self.prefix: None if self.averaged is None else self.averaged.module}

    def averaged_weights(self) -> dict[str, torch.Tensor]:
        """The averaged network's state dict, named as the model's (what `best.safetensors` gets)."""
        if self.averaged is None:
            raise TrainerError("EMA: no averaged weights before fit starts")
        return self.averaged.module.state_dict()

    # ---------------------------------------------------------------------------------- events
    def on_fit_start(self, trainer: Trainer) -> None:
        model = trainer.unwrapped_model
        # No `device`: n_averaged stays a CPU tensor, so AveragedModel's `n_averaged == 0` test
        # never waits for a GPU; the copy itself is on the model's device.
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=self.buffers == "average")
        self.averaged.requires_grad_(False).eval()
        self.updates = 0
        if self._pending is not None:
            self._load(self._pending)

    def on_train_batch_end(self, trainer: Trainer) -> None:
        state = trainer.state
        if not state.optimizer_stepped or state.step_skipped or state.global_step % self.every_n_steps:
            return
        assert self.averaged is not None
        self.averaged.update_parameters(trainer.unwrapped_model)
        self.updates += 1

    def on_epoch_end(self, trainer: Trainer) -> None:
        if not self.validate or trainer.val_loader is None or self.averaged is None:
            return
        module = self.averaged.module
        if self.buffers == "recompute" and self.updates:
            self.recompute_bn(trainer)
        with trainer.accelerator.autocast():
            trainer.evaluate(trainer.val_loader, prefix=self.prefix, model=module)

    # ---------------------------------------------------------------------------------- pieces
    def recompute_bn(self, trainer: Trainer) -> None:
        """BatchNorm statistics of the averaged weights from training batches, the same on every process.

        Runs on a forked RNG so the run's random streams do not move; each process averages
        its own batches, then the statistics are averaged across processes.
        """
        assert self.averaged is not None
        module = self.averaged.module
        norms = [m for m in module.modules() if isinstance(m, BATCH_NORMS) and m.track_running_stats]
        was_training = module.training
        module.train()  # as `swa_utils.update_bn`: the whole network in training mode
        try:
            recompute_batch_norm(trainer, module, norms, self.recompute_batches)
        finally:
            module.train(was_training)

    def _average(
        self, ema: Sequence[torch.Tensor], current: Sequence[torch.Tensor], n_averaged: torch.Tensor | int
    ) -> None:
        """PyTorch's EMA function with this update's decay (which changes during the warm-up)."""
        get_ema_multi_avg_fn(self.current_decay())(ema, current, n_averaged)

    def _load(self, state: dict[str, Any]) -> None:
        assert self.averaged is not None
        saved = state.get("decay")
        if saved is not None and not math.isclose(float(saved), self.decay):
            raise TrainerError(
                f"EMA: the checkpoint averaged with decay {saved}, this run asks for {self.decay}; resume with "
                "the saved decay, or start a new run from the checkpoint's weights"
            )
        weights = state.get("weights")
        if weights is not None:
            self.averaged.module.load_state_dict(weights)
        self.updates = int(state.get("updates", 0))
        with torch.no_grad():
            self.averaged.n_averaged.fill_(self.updates)
        self._pending = None
