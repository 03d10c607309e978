"""FreezeUnfreeze: freeze a backbone at fit start, unfreeze it at given epochs from the head down."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.callbacks.lr_scheduler import LearningRateScheduler
from callbacks_kit.compat import BATCH_NORMS
from callbacks_kit.errors import FinetuneError
from callbacks_kit.finetune import backbone_blocks, select_parameters

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer

UnfreezeAt = int | Sequence[int] | Mapping[int, str | Sequence[str]]
_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")  # a group's LR and the schedule values stored in it


class FreezeUnfreeze(Callback):
    """Freezes a backbone when `fit` starts and unfreezes it at given epochs, from the head down.

    Works with an optimizer built up front over all parameters (so a resumed run has the
    same param groups): frozen parameters keep `grad=None`, which the optimizer skips, so
    they do not change by a single bit, with no weight decay and no momentum. Frozen
    BatchNorm layers stay in eval mode (running statistics fixed) unless `train_bn`. Under
    DDP the wrapper is rebuilt whenever the trainable set changes.

    Args:
        backbone: Module or parameter names (dotted prefixes, e.g. "layer4" or "features")
            to freeze, listed from the input to the head. None: every parameter outside the
            torchvision head, in blocks (`finetune.backbone_blocks`).
        unfreeze_at: When to unfreeze. An epoch: the whole backbone. Increasing epochs: one
            block per epoch from the head down, the last epoch takes all that is left
            (`[2, 4]` on ResNet: layer4 at epoch 2, everything else at 4). A mapping
            `{epoch: names}` for full control. None: frozen for the whole run.
        lr_factor: On unfreezing, each param group of the stage gets the head's LR times
            this factor (one number, or one per stage), and its whole schedule is scaled
            to match; each stage then needs param groups of its own (`finetune.param_groups`).
            The schedules scaled are those of every `LearningRateScheduler` in the trainer's callbacks
            (`trainer.callbacks.find(LearningRateScheduler)`). None keeps the LRs the groups were built with.
        train_bn: Keep BatchNorm layers of the backbone trainable and in training mode.
    """

    order = Order.FREEZE

    def __init__(
        self,
        backbone: str | Sequence[str] | None = None,
        unfreeze_at: UnfreezeAt | None = None,
        lr_factor: float | Sequence[float] | None = None,
        train_bn: bool = False,
    ) -> None:
        self.backbone = [backbone] if isinstance(backbone, str) else None if backbone is None else list(backbone)
        self.unfreeze_at = unfreeze_at
        epochs = _epochs(unfreeze_at)
        factors = [lr_factor] if isinstance(lr_factor, (int, float)) else list(lr_factor or [])
        for factor in factors:
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
                raise FinetuneError(f"lr_factor must be a positive number (or one per stage), got {lr_factor!r}")
        if lr_factor is not None and not isinstance(lr_factor, (int, float)) and len(factors) != len(epochs):
            raise FinetuneError(f"lr_factor has {len(factors)} values for {len(epochs)} unfreeze stages")
        self.lr_factor = lr_factor
        self.train_bn = train_bn
        self.stages: list[tuple[int, list[str]]] = []  # (epoch, names), resolved at fit start
        self.unfrozen: list[int] = []  # indices of stages already unfrozen
        self._pending: list[int] | None = None
        self._names: list[str] = []
        self._frozen: list[nn.Parameter] = []
        self._frozen_bn: list[nn.Module] = []
        self._group_stage: dict[int, int] = {}  # param group -> stage, with lr_factor
        self._head_group: int | None = None

    # ----------------------------------------------------------------------------- events
    def on_fit_start(self, trainer: Trainer) -> None:
        model = trainer.unwrapped_model
        self._names = self.backbone if self.backbone is not None else backbone_blocks(model)
        for name in self._names:
            select_parameters(model, name)  # an unknown name fails here, with the closest real ones
        self.stages = self._stages(model)
        if self.lr_factor is not None:
            self._check_groups(trainer)
        self.unfrozen = list(self._pending or [])
        self._pending = None
        if any(index >= len(self.stages) for index in self.unfrozen):
            raise FinetuneError(
                f"the saved state unfroze stages {self.unfrozen}, but unfreeze_at={self.unfreeze_at!r} has "
                f"{len(self.stages)}; resume with the FreezeUnfreeze settings the run was saved with"
            )
        self._apply(trainer)
        if not any(p.requires_grad for p in model.parameters()):
            raise FinetuneError("the backbone covers every parameter: nothing is left to train; leave the head out")

    def on_epoch_start(self, trainer: Trainer) -> None:
        due = [i for i, (epoch, _) in enumerate(self.stages) if epoch <= trainer.state.epoch and i not in self.unfrozen]
        if not due:
            return
        for index in due:
            self.unfrozen.append(index)
            if self.lr_factor is not None:
                self._scale_lrs(trainer, index)
        self._apply(trainer)
        unfrozen = ", ".join(name for i in due for name in self.stages[i][1])
        trainer.print(f"FreezeUnfreeze: epoch {trainer.state.epoch}: unfroze {unfrozen}")

    def on_train_batch_start(self, trainer: Trainer) -> None:
        # model.train() runs at every epoch start and after validation: put frozen BN back.
        for module in self._frozen_bn:
            module.training = False

    def on_after_backward(self, trainer: Trainer) -> None:
        for param in self._frozen:  # grad None: the optimizer skips it (no decay, no momentum)
            param.grad = None

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"unfrozen": sorted(self.unfrozen if self._pending is None else self._pending)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = [int(i) for i in state.get("unfrozen", [])]  # applied at fit start

    # ----------------------------------------------------------------------------- helpers
    def _stages(self, model: nn.Module) -> list[tuple[int, list[str]]]:
        when, names = self.unfreeze_at, self._names
        if when is None:
            return []
        if isinstance(when, int):
            return [(when, list(names))]
        if isinstance(when, Mapping):
            stages = [(epoch, [n] if isinstance(n, str) else list(n)) for epoch, n in sorted(when.items())]
            for _, stage_names in stages:
                for name in stage_names:
                    select_parameters(model, name)
                    if not _covered(name, names):
                        raise FinetuneError(f"unfreeze_at names {name!r}, which is not inside the backbone {names}")
            return stages
        epochs = list(when)
        if len(epochs) > len(names):
            raise FinetuneError(
                f"{len(epochs)} unfreeze epochs but the backbone has {len(names)} blocks ({', '.join(names)}); "
                "give fewer epochs, or unfreeze_at={epoch: names}"
            )
        stages = [(epoch, [names[-1 - i]]) for i, epoch in enumerate(epochs[:-1])]
        return [*stages, (epochs[-1], names[: len(names) - len(epochs) + 1])]

    def _is_frozen(self, name: str) -> bool:
        opened = [n for i in self.unfrozen for n in self.stages[i][1]]
        return _covered(name, self._names) and not _covered(name, opened)

    def _apply(self, trainer: Trainer) -> None:
        """Set requires_grad and BatchNorm modes from the stages unfrozen so far; tell DDP."""
        model = trainer.unwrapped_model
        batch_norms = {
            n: m for n, m in model.named_modules() if isinstance(m, BATCH_NORMS) and _covered(n, self._names)
        }
        bn_params = {f"{n}.{p}" for n, m in batch_norms.items() for p, _ in m.named_parameters(recurse=False)}
        changed, self._frozen = False, []
        for name, param in model.named_parameters():
            if not _covered(name, self._names):
                continue
            freeze = self._is_frozen(name) and not (self.train_bn and name in bn_params)
            if param.requires_grad == freeze:
                param.requires_grad_(not freeze)
                changed = True
            if freeze:
                param.grad = None
                self._frozen.append(param)
        was_frozen = self._frozen_bn
        self._frozen_bn = [] if self.train_bn else [m for n, m in batch_norms.items() if self._is_frozen(n)]
        for module in batch_norms.values():
            if any(module is m for m in self._frozen_bn):
                module.train(False)
            elif any(module is m for m in was_frozen):
                module.train(model.training)
        if changed:
            trainer.refresh_trainable()

    def _check_groups(self, trainer: Trainer) -> None:
        """With lr_factor, every param group must belong to one stage, or hold no backbone at all."""
        model = trainer.unwrapped_model
        stage_of = {id(p): i for i, (_, names) in enumerate(self.stages) for n in names for p in _params(model, n)}
        backbone = {id(p) for n, p in model.named_parameters() if _covered(n, self._names)}
        self._group_stage, self._head_group = {}, None
        for index, group in enumerate(trainer.optimizer.param_groups):
            owners = {stage_of.get(id(p), -1 if id(p) in backbone else None) for p in group["params"]}
            if None in owners and self._head_group is None:
                self._head_group = index
            stages = {owner for owner in owners if owner is not None and owner != -1}
            if stages and len(owners) > 1:
                raise FinetuneError(
                    f"param group {group.get('name', f'group{index}')!r} mixes an unfreezing stage with other "
                    "parameters; with lr_factor each stage needs param groups of its own: build the optimizer "
                    "from callbacks_kit.finetune.param_groups(model, {...}) with the stage names as keys"
                )
            if stages:
                self._group_stage[index] = stages.pop()
        if self._head_group is None:
            raise FinetuneError("lr_factor is relative to the head's LR, but no param group holds the head")

    def _scale_lrs(self, trainer: Trainer, stage: int) -> None:
        factor = self.lr_factor if isinstance(self.lr_factor, (int, float)) else list(self.lr_factor or [])[stage]
        groups = trainer.optimizer.param_groups
        assert self._head_group is not None
        head = groups[self._head_group]
        for index, owner in self._group_stage.items():
            if owner != stage:
                continue
            group = groups[index]
            base = group.get("initial_lr", group["lr"])
            if base <= 0:
                raise FinetuneError(f"param group {group.get('name', index)!r} has LR 0, so lr_factor cannot scale it")
            ratio = float(factor) * head.get("initial_lr", head["lr"]) / base
            for key in _LR_KEYS:
                if key in group:
                    group[key] *= ratio
            for scheduler in trainer.callbacks.find(LearningRateScheduler):
                scheduler.scale_group(index, ratio)


def _epochs(unfreeze_at: UnfreezeAt | None) -> list[int]:
    if unfreeze_at is None:
        return []
    if isinstance(unfreeze_at, Mapping):
        epochs = sorted(unfreeze_at)
    elif isinstance(unfreeze_at, int):
        epochs = [unfreeze_at]
    else:
        epochs = list(unfreeze_at)
        if epochs != sorted(set(epochs)):
            raise FinetuneError(f"unfreeze_at epochs must be increasing, got {epochs}")
    if not epochs or any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in epochs):
        raise FinetuneError(f"unfreeze_at must hold epochs >= 1 (0 would never freeze), got {unfreeze_at!r}")
    return epochs


def _params(model: nn.Module, name: str) -> list[nn.Parameter]:
    return list(select_parameters(model, name).values())


def _covered(name: str, names: Sequence[str]) -> bool:
    """True when `name` is one of `names` or lies inside one (dotted prefix)."""
    return any(name == n or name.startswith(n + ".") for n in names)
