"""A checkpoint written by callbacks_kit 0.1.0 still loads, restores every piece of state, and resumes.

tests/fixtures/checkpoint_v0_1_0/ is a mid-epoch checkpoint (step 11 of 24) that the 0.1.0
release wrote for the run in tests/fixtures/make_checkpoint_v0_1_0.py. Only public API is
used, so this keeps checking old checkpoints however the package's modules are arranged.

What is compared bit for bit, and what is not:
- Loading is exact: after the resume, the weights and optimizer moments are the fixture's
  tensors, bit for bit, and the position, LR schedule and callbacks' state are the saved ones.
- Resuming is exact within one environment: a run resumed from the fixture, interrupted and
  resumed again ends bit-identical to a run resumed from the fixture without interruption.
- Training the run from scratch reaches the fixture's weights only to rounding (`ROUNDING`):
  float results depend on the math kernels the machine runs. The same torch picks different
  kernels on different CPUs (MKL's sgemm paths differ by vendor and vector width): on the
  machine that wrote the fixture, MKL_CBWR=COMPATIBLE alone moves 160 of the first layer's
  256 weights by 1.19e-07 after 11 steps, the very size of the difference seen on another
  machine with accelerate 1.16; on this machine accelerate 1.15 and 1.16 give the same bits.
  A change of the run itself (data, model, optimizer, schedule) moves them by far more.
  Older torch (2.2) draws other dropout masks from the same seed: from scratch it trains
  another run, so that comparison needs the fixture's masks (`_same_dropout_masks`).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
from fixtures.make_checkpoint_v0_1_0 import (
    BATCH_SIZE,
    CHECKPOINT_NAME,
    EPOCHS,
    FIXTURE,
    SAVE_STEP,
    TRAIN_SAMPLES,
    build_run,
)
from helpers.checkpoints import StopAtStep

from callbacks_kit import Callback, Trainer

# The fixture's run is 0.1.0's, built with the scheduler's 0.1.0 name (its state key in the checkpoint).
pytestmark = pytest.mark.filterwarnings("ignore:LRScheduler was renamed:DeprecationWarning")

# Kernel-path rounding, after 11 to 24 AdamW steps: observed up to 2.1e-07 (ATEN_CPU_CAPABILITY=default,
# MKL_CBWR=COMPATIBLE); an LR of 0.0501 instead of 0.05 moves them by 4e-02 in the same 11 steps.
ROUNDING = 1e-5
# The units torch 2.14 drops of 32 at seed 0, p=0.3: the random stream the fixture's run trained with.
FIXTURE_DROPOUT_MASK = [0, 1, 3, 5, 19, 28, 30]
GENERATED_WITH = json.loads((FIXTURE / "generated_with.json").read_text())
PROVENANCE = (
    f"the fixture was written by callbacks_kit {GENERATED_WITH['callbacks_kit']} with torch "
    f"{GENERATED_WITH['torch']}, accelerate {GENERATED_WITH['accelerate']}; this is torch {torch.__version__}"
)


class _WeightsAt(Callback):
    """Keeps a copy of the model's weights right after optimizer step `step`."""

    order = 300

    def __init__(self, step: int) -> None:
        self.step = step
        self.weights: dict[str, torch.Tensor] | None = None

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if trainer.state.optimizer_stepped and trainer.state.global_step == self.step:
            self.weights = _weights(trainer)


class _EpochMetrics(Callback):
    """Records `(step, metrics)` at every epoch end: a resumed epoch's train/epoch_loss must match too."""

    order = 300

    def __init__(self) -> None:
        self.log: list[tuple[int, dict[str, float]]] = []

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.log.append((trainer.state.global_step, _metrics(trainer)))


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in trainer.unwrapped_model.state_dict().items()}


def _metrics(trainer: Trainer) -> dict[str, float]:
    return {k: v for k, v in trainer.state.metrics.items() if not k.startswith("perf/")}  # perf/*: timings


def _assert_same_tensors(ours: dict, theirs: dict, what: str) -> None:
    assert ours.keys() == theirs.keys(), f"{what}: keys {sorted(ours)} != {sorted(theirs)}"
    for key in ours:
        a, b = ours[key], theirs[key]
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what}[{key!r}]: {a.shape}/{a.dtype} != {b.shape}/{b.dtype}"
        if not torch.equal(a, b):
            diff = (a.double() - b.double()).abs()
            raise AssertionError(
                f"{what}[{key!r}] differs in {int((diff > 0).sum())} of {a.numel()} values "
                f"(max abs difference {float(diff.max()):.3g})"
            )


def _assert_same_optimizer(ours: dict, theirs: dict) -> None:
    assert ours["param_groups"] == theirs["param_groups"], "optimizer param_groups differ (lr, betas, ...)"
    assert ours["state"].keys() == theirs["state"].keys(), "optimizer state holds other parameters"
    for index, state in ours["state"].items():
        _assert_same_tensors(state, theirs["state"][index], f"optimizer state of parameter {index}")


class _StateAtStart(Callback):
    """What the trainer holds once `fit` has restored the checkpoint (at `on_fit_start`)."""

    order = 300

    def __init__(self) -> None:
        self.seen: dict = {}

    def on_fit_start(self, trainer: Trainer) -> None:
        self.seen = {
            "weights": _weights(trainer),
            "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),  # training goes on updating it in place
            "position": (trainer.state.epoch, trainer.state.batch_idx, trainer.state.global_step),
            "samples_seen": trainer.state.samples_seen,
            "lr": [group["lr"] for group in trainer.optimizer.param_groups],
            "callbacks": {type(c).__name__: c.state_dict() for c in trainer.callbacks if hasattr(c, "state_dict")},
        }


def _close(ours: dict, theirs: dict, what: str) -> None:
    """Equal up to kernel rounding (`ROUNDING`), with the provenance in the message."""
    for key in ours:
        gap = float((ours[key].double() - theirs[key].double()).abs().max())
        assert gap <= ROUNDING, f"{what}[{key!r}] is {gap:.3g} away (more than rounding, {ROUNDING}); {PROVENANCE}"


def _resume(tmp_path: Path, source: Path, extra: list[Callback], resume_from: str | None = None) -> tuple:
    """The fixture's run resumed from `source` (a copy of the fixture, or `resume_from`) in `tmp_path`."""
    epochs = _EpochMetrics()
    run = build_run(tmp_path, [epochs, *extra])
    torch.manual_seed(12345)  # another process would start from other RNG states: the checkpoint must restore them
    run.trainer.fit(run.train_loader, run.val_loader, epochs=EPOCHS, resume_from=resume_from or str(source))
    return run, epochs


def _fixture_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "checkpoint_v0_1_0"
    shutil.copytree(FIXTURE, copy)  # a resume must work from a folder it may write next to
    return copy


def _same_dropout_masks() -> bool:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        dropped = torch.nn.functional.dropout(torch.ones(32), 0.3, training=True) == 0
    return dropped.nonzero().flatten().tolist() == FIXTURE_DROPOUT_MASK


@pytest.fixture(scope="module")
def from_scratch(tmp_path_factory) -> dict:
    """The whole run from scratch with the code under test, uninterrupted."""
    if not _same_dropout_masks():
        pytest.skip(f"torch {torch.__version__} draws other dropout masks than the fixture's torch from the same seed")
    at_save = _WeightsAt(SAVE_STEP)
    run = build_run(tmp_path_factory.mktemp("from_scratch"), [at_save])
    run.trainer.fit(run.train_loader, run.val_loader, epochs=EPOCHS)
    return {"weights": _weights(run.trainer), "weights_at_save": at_save.weights, "step": run.trainer.state.global_step}


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> dict:
    """The run resumed from the fixture (the folder holding last.json) and trained to the end uninterrupted."""
    tmp = tmp_path_factory.mktemp("resumed")
    start = _StateAtStart()
    run, epochs = _resume(tmp / "run", _fixture_copy(tmp), [start])
    return {
        "start": start.seen,
        "weights": _weights(run.trainer),
        "optimizer": run.trainer.optimizer.state_dict(),
        "metrics": _metrics(run.trainer),
        "epoch_metrics": epochs.log,
        "step": run.trainer.state.global_step,
    }


def test_training_from_scratch_reaches_the_fixtures_weights_up_to_rounding(from_scratch):
    """Without this, a failure below could be a change in the training itself, not in resuming."""
    saved = safetensors.torch.load_file(str(FIXTURE / CHECKPOINT_NAME / "model.safetensors"))
    assert from_scratch["weights_at_save"] is not None, f"the run never reached step {SAVE_STEP}"
    assert from_scratch["weights_at_save"].keys() == saved.keys()
    _close(from_scratch["weights_at_save"], saved, f"weights at step {SAVE_STEP} trained from scratch")


def test_the_v0_1_0_checkpoint_restores_every_piece_of_state(resumed):
    start, folder = resumed["start"], FIXTURE / CHECKPOINT_NAME
    _assert_same_tensors(start["weights"], safetensors.torch.load_file(str(folder / "model.safetensors")), "weights")
    saved_state = json.loads((folder / "state.json").read_text())
    saved_tensors = safetensors.torch.load_file(str(folder / "state.safetensors"))
    for index, moments in start["optimizer"]["state"].items():
        for name, value in moments.items():
            _assert_same_tensors({name: value}, {name: saved_tensors[f"optimizer.state.{index}.{name}"]}, "optimizer")
    trainer = saved_state["trainer"]
    assert start["position"] == (trainer["epoch"], trainer["batch_idx"], trainer["global_step"]) == (1, 3, 11)
    assert start["samples_seen"] == trainer["samples_seen"]
    assert start["lr"] == [group["lr"] for group in saved_state["optimizer"]["param_groups"]]
    assert start["lr"] == pytest.approx([0.05 * 0.7**2])  # StepLR: x0.7 at steps 5 and 10
    scheduler = start["callbacks"]["LRScheduler"]["scheduler"]
    assert scheduler["last_epoch"] == saved_state["callbacks"]["LRScheduler"]["scheduler"]["last_epoch"] == 11
    early = saved_state["callbacks"]["EarlyStopping"]
    assert start["callbacks"]["EarlyStopping"]["best"] == early["best"]


@pytest.mark.parametrize("interrupt_at", [15, 19])  # mid epoch 2 (0-based 1); mid epoch 3, before the step-22 save
def test_a_run_resumed_from_v0_1_0_resumes_again_bit_identically(resumed, tmp_path, interrupt_at):
    first, _ = _resume(tmp_path / "run", _fixture_copy(tmp_path) / CHECKPOINT_NAME, [StopAtStep(interrupt_at)])
    assert first.trainer.state.global_step == interrupt_at  # stopped there, and saved (a stop mid-epoch saves)
    run, epochs = _resume(tmp_path / "run", tmp_path / "unused", [], resume_from="last")

    assert resumed["step"] == run.trainer.state.global_step == EPOCHS * TRAIN_SAMPLES // BATCH_SIZE
    context = f"resumed from the 0.1.0 fixture, stopped at step {interrupt_at} and resumed ({PROVENANCE})"
    try:
        _assert_same_tensors(_weights(run.trainer), resumed["weights"], "final weights")
        _assert_same_optimizer(run.trainer.optimizer.state_dict(), resumed["optimizer"])
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {context} vs. resumed from it without interruption") from None
    ends = [(step, metrics) for step, metrics in resumed["epoch_metrics"] if step > interrupt_at]
    assert [(s, m) for s, m in epochs.log if s > interrupt_at] == ends, f"metrics at the epoch ends differ: {context}"
    assert _metrics(run.trainer) == resumed["metrics"], f"final metrics differ: {context}"
    assert "train/loss" in resumed["metrics"] and "val/accuracy" in resumed["metrics"]


def test_the_resumed_run_ends_where_training_from_scratch_ends_up_to_rounding(resumed, from_scratch):
    assert resumed["step"] == from_scratch["step"]
    _close(resumed["weights"], from_scratch["weights"], "final weights resumed from the fixture vs. from scratch")
