"""A checkpoint written by callbacks_kit 0.1.0 still loads and resumes bit-identically.

tests/fixtures/checkpoint_v0_1_0/ is a mid-epoch checkpoint (step 11 of 24) that the 0.1.0
release wrote for the run in tests/fixtures/make_checkpoint_v0_1_0.py. Here the code under
test trains that run uninterrupted, and resumes it from a copy of the fixture: both must
end with the same weights, optimizer state and metrics, bit for bit. Only public API is
used, so this keeps checking old checkpoints however the package's modules are arranged.
"""

from __future__ import annotations

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

from callbacks_kit import Callback, Trainer

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


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The whole run, from scratch, with the code under test."""
    at_save, epochs = _WeightsAt(SAVE_STEP), _EpochMetrics()
    run = build_run(tmp_path_factory.mktemp("uninterrupted"), [at_save, epochs])
    run.trainer.fit(run.train_loader, run.val_loader, epochs=EPOCHS)
    return {
        "weights": _weights(run.trainer),
        "optimizer": run.trainer.optimizer.state_dict(),
        "metrics": _metrics(run.trainer),
        "epoch_metrics": [(step, metrics) for step, metrics in epochs.log if step > SAVE_STEP],
        "step": run.trainer.state.global_step,
        "weights_at_save": at_save.weights,
    }


def test_the_run_still_reaches_the_fixtures_weights(uninterrupted):
    """Without this, a failure below could be a change in the training itself, not in resuming."""
    saved = safetensors.torch.load_file(str(FIXTURE / CHECKPOINT_NAME / "model.safetensors"))
    assert uninterrupted["weights_at_save"] is not None, f"the uninterrupted run never reached step {SAVE_STEP}"
    try:
        _assert_same_tensors(uninterrupted["weights_at_save"], saved, f"weights at step {SAVE_STEP}")
    except AssertionError as exc:
        raise AssertionError(
            f"training from scratch no longer reproduces the fixture's first {SAVE_STEP} steps ({exc}); "
            f"{PROVENANCE}. The model, data, optimizer or schedule of the run changed, or the numerics did."
        ) from None


@pytest.mark.parametrize("resume_from", ["checkpoint folder", "folder holding last.json"])
def test_v0_1_0_checkpoint_resumes_bit_identically(uninterrupted, tmp_path, resume_from):
    copy = tmp_path / "checkpoint_v0_1_0"
    shutil.copytree(FIXTURE, copy)  # a resume must work from a folder it may write next to
    path: Path = copy / CHECKPOINT_NAME if resume_from == "checkpoint folder" else copy
    epochs = _EpochMetrics()
    run = build_run(tmp_path / "resumed", [epochs])
    torch.manual_seed(12345)  # another process would start from other RNG states: the checkpoint must restore them
    run.trainer.fit(run.train_loader, run.val_loader, epochs=EPOCHS, resume_from=str(path))

    assert uninterrupted["step"] == EPOCHS * TRAIN_SAMPLES // BATCH_SIZE
    assert run.trainer.state.global_step == uninterrupted["step"]
    context = f"resumed from the 0.1.0 fixture ({PROVENANCE})"
    try:
        _assert_same_tensors(_weights(run.trainer), uninterrupted["weights"], "final weights")
        _assert_same_optimizer(run.trainer.optimizer.state_dict(), uninterrupted["optimizer"])
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {context} vs. trained without interruption") from None
    assert epochs.log == uninterrupted["epoch_metrics"], f"metrics at the epoch ends (step, metrics) differ: {context}"
    assert _metrics(run.trainer) == uninterrupted["metrics"], f"final metrics differ: {context}"
    assert "train/loss" in uninterrupted["metrics"] and "val/accuracy" in uninterrupted["metrics"]
