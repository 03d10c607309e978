"""LayerStats: per-layer gradient norms, update-to-weight ratios and activation statistics on a sampled step."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from callbacks_kit.cadence import warn_once
from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.compat import compiled_inner
from callbacks_kit.cpu import one_cpu_thread
from callbacks_kit.errors import TrainerError
from callbacks_kit.hooks import ActivationCapture
from callbacks_kit.inspection.image_summary import add_image
from callbacks_kit.inspection.render import BLACK, captioned, jet
from callbacks_kit.layers import resolve_module
from callbacks_kit.norms import group_norms

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer

LayerFilter = str | re.Pattern[str] | Sequence[str] | Callable[[str, nn.Module], bool]
# The layers LayerStats looks at unless told otherwise: those that hold the weights.
DEFAULT_KINDS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Columns of one layer's sample, in the order they cross to the host.
SCALARS = ("grad_norm", "update_ratio", "act_mean", "act_std", "act_zeros")
HIST_VALUES = 1 << 16  # values per layer and sample that go into the activation histogram


class LayerStats(Callback):
    """Layer health every `every_n_steps` optimizer steps, written on the main process.

    On a sampled step, for each chosen layer, under one prefix (`per_layer/`, which sorts after
    the training and validation charts in TensorBoard):

    - `per_layer/grad_norm/<layer>`: the L2 norm of the layer's gradients (unscaled, before
      clipping, as the optimizer receives them);
    - `per_layer/update_ratio/<layer>`: `||w_after - w_before|| / ||w_before||` over the layer's
      parameters, for the optimizer step itself (the heuristic: near 1e-3; far below, the
      layer barely learns; far above, it is unstable);
    - `per_layer/act_mean/<layer>`, `per_layer/act_std/<layer>`: mean and standard deviation of the
      layer's output on the step's (first) training batch;
    - `per_layer/act_zeros/<layer>`: the fraction of those outputs at or below zero: for a ReLU
      the zeros it outputs, for a conv or linear layer the units a following ReLU zeroes
      (dead units when it stays near 1);
    - `per_layer/act_hist/<layer>`: an image redrawn at every epoch end, fastai's "colorful dimension": one column per
      sampled step (x), the histogram of the layer's output values (y, low at the bottom),
      colour the log of the count. The value range is fixed per layer at its first sample
      (1.25 x its largest magnitude, or `hist_range`), so columns compare; values beyond it
      count in the edge rows, where an explosion shows up. A collapse shows as one thin band.

    Forward hooks are attached (on the bare model) only for the first training batch of a
    sampled step and removed at its `on_train_batch_end`. Everything is computed on the
    device and read once, at the next log step (or epoch end): no host sync on other steps.
    Under DDP the activations are the main process's batch; gradients and updates are those
    every process shares. A model trained with `torch.compile` gets no activation statistics
    (hooks added to a compiled model recompile it); the others still come.

    Args:
        every_n_steps: Optimizer steps between samples (sampled at steps N, 2N, ...).
        layers: Which layers: a regex searched in the module names (e.g. `"conv|fc"`), a
            list of exact names, or `(name, module) -> bool`; default every conv and linear
            layer. A filter that matches nothing raises `TrainerError` at fit start.
        bins: Histogram rows of the activation image.
        hist_range: Fixed `(low, high)` of the activation histograms, for every layer.
        max_columns: Sampled steps kept in the activation image (the oldest go first).
        scale: Pixels per histogram cell in the image.
    """

    order = Order.INSPECT

    def __init__(
        self,
        every_n_steps: int = 100,
        layers: LayerFilter | None = None,
        bins: int = 40,
        hist_range: tuple[float, float] | None = None,
        max_columns: int = 400,
        scale: int = 4,
    ) -> None:
        if min(every_n_steps, bins, max_columns, scale) < 1:
            raise TrainerError(
                f"LayerStats: every_n_steps, bins, max_columns and scale must be at least 1, got "
                f"{every_n_steps}, {bins}, {max_columns} and {scale}"
            )
        if hist_range is not None and not hist_range[0] < hist_range[1]:
            raise TrainerError(f"LayerStats: hist_range must be (low, high) with low < high, got {hist_range}")
        if isinstance(layers, str):
            try:
                layers = re.compile(layers)
            except re.error as exc:
                raise TrainerError(
                    f"LayerStats: layers={layers!r} is not a valid regular expression ({exc}); e.g. 'conv|fc'"
                ) from exc
        self.every_n_steps = every_n_steps
        self.layers = layers
        self.bins = bins
        self.hist_range = hist_range
        self.max_columns = max_columns
        self.scale = scale
        self.names: list[str] = []
        self._modules: list[nn.Module] = []
        self._capture: ActivationCapture | None = None
        self._hooks_on = True
        self._limits: dict[str, torch.Tensor] = {}  # per layer: the histogram's half-range, on the device
        self._grad_norms: torch.Tensor | None = None
        self._before: list[list[torch.Tensor]] | None = None
        self._params: list[list[nn.Parameter]] = []
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, (layers, 5 + 1 + bins)) on the device
        self.columns: dict[str, list[list[float]]] = {}  # per layer, one histogram per sample (host)
        self.column_steps: list[int] = []
        self.ranges: dict[str, tuple[float, float]] = {}
        self._drawn_at: int | None = None

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The activation images' history, so a resumed run goes on drawing them."""
        return {
            "steps": list(self.column_steps),
            "ranges": {name: list(r) for name, r in self.ranges.items()},
            "columns": {name: torch.tensor(cols) for name, cols in self.columns.items() if cols},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.column_steps = [int(s) for s in state.get("steps", [])]
        self.ranges = {str(n): (float(r[0]), float(r[1])) for n, r in state.get("ranges", {}).items()}
        self.columns = {str(n): torch.as_tensor(c).tolist() for n, c in state.get("columns", {}).items()}

    # ------------------------------------------------------------------------------ events
    def on_fit_start(self, trainer: Trainer) -> None:
        model = trainer.unwrapped_model
        if isinstance(self.layers, Sequence) and not isinstance(self.layers, str):
            for name in self.layers:
                resolve_module(model, name)  # an unknown name raises, listing the closest real ones
        chosen = [(name, m) for name, m in model.named_modules() if name and self._selected(name, m)]
        if not chosen:
            if self.layers is None:
                warn_once(self, "layers", "LayerStats: the model has no conv or linear layer; pass layers=")
            else:
                names = [name for name, _ in model.named_modules() if name]
                raise TrainerError(
                    f"LayerStats: layers={getattr(self.layers, 'pattern', self.layers)!r} matches none of the "
                    f"model's {len(names)} modules (e.g. {', '.join(names[:6])}); no layer statistics would be "
                    "written. Fix the filter, searched in the names of model.named_modules()"
                )
        self.names = [name for name, _ in chosen]
        self._modules = [m for _, m in chosen]
        self._hooks_on = compiled_inner(trainer.model) is None
        if not self._hooks_on and trainer.tb_writer is not None:
            warn_once(self, "compile", "LayerStats: the model is compiled; no activation statistics, only gradients")
        if self.hist_range is not None:
            low, high = self.hist_range
            self.ranges = dict.fromkeys(self.names, (float(low), float(high)))

    def on_before_forward(self, trainer: Trainer) -> None:
        if not self._active(trainer) or not self._due(trainer) or self._capture is not None:
            return
        if self._hooks_on and trainer.model.training:
            self._capture = ActivationCapture(trainer.unwrapped_model, self.names, reduce=self._activation_stats)
            self._capture.attach()

    def on_after_backward(self, trainer: Trainer) -> None:
        if not self._active(trainer) or not self._due(trainer):
            return
        params = [[p for p in m.parameters() if p.grad is not None] for m in self._modules]
        self._grad_norms = group_norms([[p.grad for p in group if p.grad is not None] for group in params])
        self._before = [[p.detach().clone() for p in group] for group in params]
        self._params = params

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if self._capture is not None:
            self._capture.remove()  # hooks live for the sampled batch only
        state = trainer.state
        if state.optimizer_stepped and self._before is not None and self._grad_norms is not None:
            self._pending.append((state.global_step, self._sample(trainer)))
            self._capture, self._before, self._grad_norms = None, None, None
        if state.is_log_step:
            self.flush(trainer)

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.flush(trainer, images=True)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.flush(trainer, images=True)

    def on_teardown(self, trainer: Trainer) -> None:
        if self._capture is not None:
            self._capture.remove()
        self._capture, self._before, self._grad_norms = None, None, None
        self._pending = []

    # ------------------------------------------------------------------------------ pieces
    def flush(self, trainer: Trainer, images: bool = False) -> None:
        """Read the pending samples from the device (one transfer) and write their scalars.

        With `images`, also redraw each layer's activation image when it has new columns
        (at epoch ends: the picture is a history, and drawing it costs more than the scalars).
        """
        writer = trainer.tb_writer
        if writer is None:
            return
        with one_cpu_thread():  # many tiny host ops: more threads only wait on each other
            if self._pending:
                self._write_scalars(writer)
            if images and self._drawn_at != (self.column_steps[-1] if self.column_steps else None):
                for name in self.names:
                    if self.columns.get(name):
                        add_image(writer, f"per_layer/act_hist/{name}", self.image(name), self.column_steps[-1])
                self._drawn_at = self.column_steps[-1] if self.column_steps else None

    def _write_scalars(self, writer: Any) -> None:
        steps = [step for step, _ in self._pending]
        values = torch.stack([sample for _, sample in self._pending]).cpu().tolist()
        self._pending = []
        for step, rows in zip(steps, values, strict=True):
            for name, row in zip(self.names, rows, strict=True):
                for key, value in zip(SCALARS, row, strict=False):
                    if value == value:  # not NaN: the layer has that statistic
                        writer.add_scalar(f"per_layer/{key}/{name}", value, step)
                if row[len(SCALARS)] == row[len(SCALARS)]:  # a histogram was taken
                    limit = row[len(SCALARS)]
                    self.ranges.setdefault(name, (-limit, limit))
                    self.columns.setdefault(name, []).append(row[len(SCALARS) + 1 :])
                    self.columns[name] = self.columns[name][-self.max_columns :]
            self.column_steps = [*self.column_steps, step][-self.max_columns :]

    def image(self, name: str) -> torch.Tensor:
        """The "colorful dimension" of one layer: `(3, caption + bins * scale, max(columns * scale, 240))`."""
        counts = torch.tensor(self.columns[name]).T.flip(0)  # (bins, columns), high values on top
        heat = counts.log1p()
        heat = jet(heat / heat.max().clamp_min(1e-12))
        heat = heat.repeat_interleave(self.scale, dim=1).repeat_interleave(self.scale, dim=2)
        width = max(heat.shape[-1], 240)
        canvas = torch.ones(3, heat.shape[1], width)
        canvas[:, :, : heat.shape[-1]] = heat
        low, high = self.ranges.get(name, (float("nan"), float("nan")))
        columns = len(self.columns[name])
        first = self.column_steps[-columns] if len(self.column_steps) >= columns else 0
        lines = [
            (f"{name}: values {low:.3g} (bottom) to {high:.3g} (top)", BLACK),
            (f"steps {first} to {self.column_steps[-1] if self.column_steps else 0}, colour log(count)", BLACK),
        ]
        return captioned(canvas, lines)

    def _sample(self, trainer: Trainer) -> torch.Tensor:
        """`(layers, 5 + 1 + bins)` on the device: the scalars, the histogram's half-range, its counts."""
        assert self._before is not None and self._grad_norms is not None
        device = trainer.device
        before = group_norms(self._before).to(device)
        for params, copies in zip(self._params, self._before, strict=True):
            for param, copy in zip(params, copies, strict=True):
                copy.sub_(param.detach())  # the update in place: |before - after| is |after - before|, bit for bit
        ratios = group_norms(self._before).to(device) / before
        grads = self._grad_norms.to(device)
        captured = self._capture.outputs if self._capture is not None else {}
        nan = torch.full((1,), float("nan"), device=device)
        no_activation = torch.full((4 + self.bins,), float("nan"), device=device)
        rows = []
        for i, name in enumerate(self.names):
            activation = captured.get(name)
            activation = activation.to(device) if isinstance(activation, torch.Tensor) else no_activation
            if self._params[i]:
                rows.append(torch.cat([grads[i : i + 1], ratios[i : i + 1], activation]))
            else:  # no trainable parameter (frozen, or a ReLU): activations only
                rows.append(torch.cat([nan, nan, activation]))
        return torch.stack(rows)

    def _activation_stats(self, name: str, output: torch.Tensor) -> torch.Tensor:
        """`[mean, std, share <= 0, half-range, counts...]` of one output, on its device (a hook).

        Mean, std and the share at or below zero use every value; the histogram counts an evenly
        strided subset of at most `HIST_VALUES` (its shape, not its total, is what the image shows).
        """
        x = output.reshape(-1)
        values = x.float() if x.dtype != torch.float32 else x
        # On a CPU std_mean takes 6x as long as std and mean apart (18 against 3 ms for conv1 of the
        # main job), and summing a bool mask 8x as long as count_nonzero: the hooks were 60% of a
        # sampled forward. The std is std_mean's bit for bit, the mean within one float32 ulp.
        std, mean = values.std(), values.mean()
        zeros = torch.count_nonzero(x <= 0) / max(1, x.numel())
        if name in self.ranges:
            low, high = self.ranges[name]
            low_t = torch.full((), low, device=x.device)
            high_t = torch.full((), high, device=x.device)
        else:
            if name not in self._limits:  # first sample: fix the range on the device, read it later
                self._limits[name] = (torch.maximum(x.amax(), -x.amin()).float() * 1.25).clamp_min(1e-6)
            high_t = self._limits[name]
            low_t = -high_t
        subset = x[:: max(1, x.numel() // HIST_VALUES)].float()
        # scatter_add_ counts without reading the largest index back (bincount's output size does).
        index = ((subset - low_t) * (self.bins / (high_t - low_t))).long().clamp_(0, self.bins - 1)
        counts = torch.zeros(self.bins, device=x.device).scatter_add_(0, index, torch.ones_like(subset))
        return torch.cat([torch.stack([mean, std, zeros.float(), high_t]), counts])

    def _active(self, trainer: Trainer) -> bool:
        return trainer.tb_writer is not None and bool(self.names)

    def _due(self, trainer: Trainer) -> bool:
        return (trainer.state.global_step + 1) % self.every_n_steps == 0  # the step this batch makes

    def _selected(self, name: str, module: nn.Module) -> bool:
        layers = self.layers
        if layers is None:
            return isinstance(module, DEFAULT_KINDS)
        if isinstance(layers, re.Pattern):
            return layers.search(name) is not None
        if callable(layers):
            return bool(layers(name, module))
        return name in layers
