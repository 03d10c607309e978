"""FreezeUnfreeze with real optimizers and a real ResNet-18 on small inputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.paths import WORKERS
from helpers.processes import run_distributed
from helpers.tiny import small_bn_cnn as make_model  # a small CNN with BatchNorm: stem, block, pool, head
from torch import nn
from torch.optim import lr_scheduler as sched
from torch.utils.data import DataLoader, TensorDataset
from torchvision import models

from callbacks_kit import Callback, FreezeUnfreeze, LearningRateScheduler, Trainer
from callbacks_kit.data import ShapesDataset
from callbacks_kit.finetune import FinetuneError, param_groups, replace_head

BATCHES = 2  # per epoch, of 4 images of 16x16: ResNet-18 still runs end to end
BODY = ("conv1", "bn1", "layer1", "layer2", "layer3")


class Snapshots(Callback):
    """Model state (parameters and BatchNorm statistics) at each epoch end, LRs at each batch."""

    order = 10

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.lrs: list[dict[str, float]] = []
        self.optimizer_state_sizes: list[int] = []

    def on_train_batch_start(self, trainer: Trainer) -> None:
        self.lrs.append({g.get("name", str(i)): g["lr"] for i, g in enumerate(trainer.optimizer.param_groups)})

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.states.append({k: v.detach().clone() for k, v in trainer.unwrapped_model.state_dict().items()})
        self.optimizer_state_sizes.append(len(trainer.optimizer.state))


def resnet() -> nn.Module:
    torch.manual_seed(0)
    model = models.resnet18()
    replace_head(model, 6)
    return model


def fit(model, optimizer, callbacks, epochs=3, **kwargs) -> Snapshots:
    snapshots = Snapshots()
    trainer = Trainer(
        model,
        optimizer,
        nn.CrossEntropyLoss(),
        callbacks=[*callbacks, snapshots],
        progress_bar=False,
        cpu=True,
        **kwargs,
    )
    data = ShapesDataset(BATCHES * 4, image_size=16, seed=0)
    trainer.fit(DataLoader(data, batch_size=4, shuffle=True), epochs=epochs)
    return snapshots


def unchanged(a, b, prefixes) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a if k.startswith(prefixes))


def changed(a, b, prefixes) -> bool:
    return all(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefixes) and k.endswith("weight"))


OPTIMIZERS = {
    "AdamW": lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1),
    "SGD+momentum+wd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=0.01),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_frozen_backbone_is_bit_identical_and_trains_after_unfreezing(name):
    model = resnet()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    # The optimizer is built up front over every parameter; the callback never touches its groups.
    snapshots = fit(model, OPTIMIZERS[name](model.parameters()), [FreezeUnfreeze(unfreeze_at=[1, 2])])
    first, second, last = snapshots.states
    # Epoch 0: the whole backbone frozen, BatchNorm statistics included; only fc trains.
    assert unchanged(first, initial, (*BODY, "layer4")) and changed(first, initial, "fc")
    assert snapshots.optimizer_state_sizes[0] == 2  # no momentum or Adam state for frozen weights
    # Epoch 1: layer4 (nearest the head) unfrozen; the rest still bit-identical.
    assert unchanged(second, initial, BODY) and changed(second, first, "layer4")
    assert changed(second, first, "layer4.0.bn1.running_mean")
    # Epoch 2: everything trains.
    assert changed(last, second, BODY) and changed(last, second, "bn1.running_var")


def test_train_bn_keeps_batchnorm_training_in_a_frozen_backbone():
    model = resnet()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    snapshots = fit(model, OPTIMIZERS["AdamW"](model.parameters()), [FreezeUnfreeze(train_bn=True)], epochs=1)
    (state,) = snapshots.states
    assert unchanged(state, initial, ("conv1", "layer1.0.conv1", "layer4.1.conv2"))
    assert changed(state, initial, ("bn1", "layer1.0.bn1", "layer4.1.bn2"))
    assert not torch.equal(state["bn1.running_mean"], initial["bn1.running_mean"])


def test_frozen_batchnorm_stays_in_eval_mode_after_validation():
    model = resnet()
    modes = []

    class Modes(Callback):
        def on_train_batch_start(self, trainer: Trainer) -> None:
            modes.append((trainer.unwrapped_model.bn1.training, trainer.unwrapped_model.fc.training))

    trainer = Trainer(
        model,
        OPTIMIZERS["SGD+momentum+wd"](model.parameters()),
        nn.CrossEntropyLoss(),
        callbacks=[FreezeUnfreeze(), Modes()],
        progress_bar=False,
        cpu=True,
    )
    data = ShapesDataset(8, image_size=16)
    trainer.fit(DataLoader(data, batch_size=4), DataLoader(data, batch_size=4), epochs=2)
    assert modes == [(False, True)] * 4  # model.train() after validation did not wake bn1


def test_unfrozen_groups_get_the_head_lr_times_a_factor_under_a_schedule():
    model = resnet()
    groups = param_groups(model, {"fc": 1e-3, "layer4": 1e-3, BODY: 1e-3})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.1)
    schedule = LearningRateScheduler(lambda opt: sched.OneCycleLR(opt, 1e-2, total_steps=3 * BATCHES), interval="step")
    snapshots = fit(model, optimizer, [FreezeUnfreeze(unfreeze_at=[1, 2], lr_factor=[0.5, 0.1]), schedule])
    body = "+".join(BODY)
    for step, lrs in enumerate(snapshots.lrs):
        epoch = step // BATCHES
        assert lrs["layer4"] == pytest.approx(lrs["fc"] * (0.5 if epoch >= 1 else 1.0), rel=1e-12)
        assert lrs[body] == pytest.approx(lrs["fc"] * (0.1 if epoch >= 2 else 1.0), rel=1e-12)
    # The schedule itself went on as planned for the head.
    reference = torch.optim.AdamW([nn.Parameter(torch.zeros(1))])
    one_cycle = sched.OneCycleLR(reference, 1e-2, total_steps=3 * BATCHES)
    for lrs in snapshots.lrs:
        assert lrs["fc"] == reference.param_groups[0]["lr"]
        reference.step()
        one_cycle.step()


def test_lr_factor_needs_a_param_group_per_stage():
    model = resnet()
    optimizer = OPTIMIZERS["AdamW"](model.parameters())
    with pytest.raises(FinetuneError, match="mixes an unfreezing stage with other parameters.*param_groups"):
        fit(model, optimizer, [FreezeUnfreeze(unfreeze_at=2, lr_factor=0.1)])
    assert not optimizer.state


def test_state_survives_a_resume():
    callback = FreezeUnfreeze(unfreeze_at=[1, 2])
    model = resnet()
    fit(model, OPTIMIZERS["AdamW"](model.parameters()), [callback], epochs=2)
    saved = json.loads(json.dumps(callback.state_dict()))
    assert saved == {"unfrozen": [0]}
    resumed = FreezeUnfreeze(unfreeze_at={5: "layer4", 9: list(BODY)})
    resumed.load_state_dict(saved)
    model = resnet()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    (state,) = fit(model, OPTIMIZERS["AdamW"](model.parameters()), [resumed], epochs=1).states
    assert changed(state, initial, "layer4") and unchanged(state, initial, BODY)


def test_named_stages_and_prefixes():
    model = resnet()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    callback = FreezeUnfreeze(["layer3", "layer4"], unfreeze_at={1: "layer4.1"})
    first, second = fit(model, OPTIMIZERS["AdamW"](model.parameters()), [callback], epochs=2).states
    assert unchanged(first, initial, ("layer3", "layer4")) and changed(first, initial, ("conv1", "layer1"))
    assert changed(second, first, "layer4.1") and unchanged(second, initial, ("layer3", "layer4.0"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": ["layer5"]}, "no layer or parameter named 'layer5'; closest: .*layer4"),
        (
            {"backbone": ["conv1", "layer4"], "unfreeze_at": [1, 2, 3]},
            "3 unfreeze epochs but the backbone has 2 blocks",
        ),
        ({"backbone": ["layer4"], "unfreeze_at": {1: "layer3"}}, "'layer3', which is not inside the backbone"),
        ({"backbone": ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]}, "nothing is left to train"),
    ],
)
def test_bad_input_fails_before_training(kwargs, message):
    model = resnet()
    optimizer = OPTIMIZERS["AdamW"](model.parameters())
    with pytest.raises(FinetuneError, match=message):
        fit(model, optimizer, [FreezeUnfreeze(**kwargs)])
    assert not optimizer.state


@pytest.mark.parametrize(("unfreeze_at", "lr_factor"), [([2, 1], None), (0, None), (1, -1.0), ([1, 2], [0.1])])
def test_bad_arguments(unfreeze_at, lr_factor):
    with pytest.raises(FinetuneError):
        FreezeUnfreeze(unfreeze_at=unfreeze_at, lr_factor=lr_factor)


def test_unknown_architecture_needs_named_modules():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 6))
    with pytest.raises(FinetuneError, match="cannot find the head of Sequential"):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1), [FreezeUnfreeze()])


@pytest.mark.slow
def test_freeze_then_unfreeze_under_ddp_in_two_gloo_processes():
    out = run_distributed(WORKERS / "dist_freeze_worker.py", "after", "before").stdout
    for mode in ("after", "before"):
        assert f"rank 0 mode {mode}: OK" in out and f"rank 1 mode {mode}: OK" in out


# ----------------------------------------------------------------------------- the main job
MAIN_TINY = ["--epochs", "2", "--train-samples", "32", "--val-samples", "16", "--batch-size", "16"]
MAIN_TINY += ["--image-size", "32", "--no-progress", "--no-inspection"]


def test_main_job_defaults_to_one_cycle_over_five_epochs():
    from callbacks_kit.cli import build_parser

    args = build_parser().parse_args(["train"])
    assert (args.scheduler, args.epochs, args.warmup, args.freeze_backbone) == ("onecycle", 5, 0, False)


@pytest.mark.slow
def test_main_job_freezes_unfreezes_and_schedules(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from callbacks_kit.cli import main

    flags = ["--unfreeze-at", "1", "--scheduler", "cosine", "--warmup", "2", "--log-every", "1"]
    assert main(["train", *MAIN_TINY, *flags, "--log-dir", str(tmp_path)]) == 0
    assert "epoch 1: unfroze conv1, bn1, layer1, layer2, layer3, layer4" in capsys.readouterr().out
    lrs = [e.value for e in EventAccumulator(str(tmp_path)).Reload().Scalars("lr/fc")]
    assert lrs[0] == pytest.approx(2e-3 / 3) and lrs[1] == pytest.approx(
        2e-3 * 2 / 3 * 0.5 * (1 + math.cos(math.pi / 4))
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--unfreeze-at", "2"], "--unfreeze-at 2 is not before --epochs 2"),
        (["--backbone-lr-factor", "0.1"], "use it with --unfreeze-at"),
        (["--warmup", "-1"], "--warmup must be 0 or more"),
    ],
)
def test_main_job_bad_finetune_flags(flags, message, capsys):
    from callbacks_kit.cli import main

    assert main(["train", *MAIN_TINY, *flags]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_main_job_backbone_lr_factor(tmp_path):
    from callbacks_kit.cli import main

    flags = ["--unfreeze-at", "1", "--backbone-lr-factor", "0.1", "--scheduler", "none"]
    assert main(["train", *MAIN_TINY, *flags, "--log-dir", str(tmp_path)]) == 0


# ----------------------------------------------------------------------------- resume with checkpoints
class StopAt(Callback):
    """Stops mid-epoch, like a preempted run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer) -> None:
        trainer.state.should_stop = trainer.state.global_step == self.step


def checkpointed_run(directory, schedule: str, stop: int | None = None, resume: str | None = None):
    from callbacks_kit.callbacks import ModelCheckpoint

    model = make_model()
    groups = param_groups(model, {"head": 0.1, "block": 0.1, "stem": 0.1})
    optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=0.01)
    if schedule == "onecycle":
        factory = lambda opt, steps_per_epoch: sched.OneCycleLR(  # noqa: E731
            opt, [g["lr"] for g in opt.param_groups], epochs=4, steps_per_epoch=steps_per_epoch
        )
        scheduler = LearningRateScheduler(factory, interval="step", warmup=3)
    else:
        plateau = lambda opt: sched.ReduceLROnPlateau(opt, patience=0, threshold=10, threshold_mode="abs")  # noqa: E731
        scheduler = LearningRateScheduler(plateau, warmup=5, warmup_interval="step")
    callbacks = [
        FreezeUnfreeze(["stem", "block"], unfreeze_at=[1, 2], lr_factor=[0.5, 0.1]),
        scheduler,
        ModelCheckpoint(directory, every_n_steps=3),
        *([StopAt(stop)] if stop else []),
    ]
    trainer = Trainer(
        model, optimizer, nn.CrossEntropyLoss(), callbacks=callbacks, progress_bar=False, cpu=True, seed=0
    )
    g = torch.Generator().manual_seed(1)
    train = TensorDataset(torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 3, (32,), generator=g))
    val = TensorDataset(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g))
    loaders = DataLoader(train, batch_size=4, shuffle=True), DataLoader(val, batch_size=4)
    trainer.fit(*loaders, epochs=4, resume_from=resume)
    return trainer.unwrapped_model.state_dict(), [g["lr"] for g in trainer.optimizer.param_groups]


@pytest.mark.parametrize("schedule", ["onecycle", "plateau"])
def test_resume_mid_epoch_after_an_unfreeze_is_bit_identical(tmp_path, schedule):
    full_weights, full_lrs = checkpointed_run(tmp_path / "full", schedule)
    checkpointed_run(tmp_path / "cut", schedule, stop=12)  # mid epoch 1: block unfrozen, its LR scaled
    weights, lrs = checkpointed_run(tmp_path / "cut", schedule, resume="last")
    assert lrs == full_lrs
    assert all(torch.equal(weights[k], full_weights[k]) for k in full_weights)
