"""The CUDA-only paths (fp16/bf16, syncs, determinism), run on a CPU wherever their logic can run there.

fp16 loss scaling is CUDA-only in Accelerate, so the scaler tests hand a CPU
`torch.amp.GradScaler("cpu")` to the Accelerator: the loop, Accelerate's optimizer wrapper
and the callbacks then take their fp16 code paths on the CPU. What needs a GPU is checked by
`scripts/gpu_check.sh` (`benchmarks/gpu_check.py`), whose CPU run is smoke-tested here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from helpers.tiny import tiny_classification_data, tiny_mlp
from torch import nn
from torch.utils.data import DataLoader

from callbacks_kit import Callback, LearningRateScheduler, TerminateOnNaN, Trainer
from callbacks_kit.checkpoint import codec
from callbacks_kit.data import default_workers, make_loader
from callbacks_kit.errors import NonFiniteError, TrainerError
from callbacks_kit.inspection import histogram

REPO = Path(__file__).resolve().parents[1]


class PoisonedLoss(nn.Module):
    """Cross-entropy whose gradient is NaN on chosen batches while the loss stays finite."""

    def __init__(self, bad_batches: set[int]) -> None:
        super().__init__()
        self.bad_batches, self.calls = bad_batches, 0

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(outputs, targets)
        if not torch.is_grad_enabled():  # the sanity check's forward
            return loss
        bad = self.calls in self.bad_batches
        self.calls += 1
        if bad:  # sqrt(0 * x) has the value 0 and the gradient NaN
            loss = loss + torch.sqrt(outputs.sum() * 0.0)
        return loss


def scaled_trainer(fused: bool, bad_batches: set[int], callbacks=(), **kwargs) -> Trainer:
    """A CPU Trainer whose Accelerator has a CPU GradScaler: the fp16 code paths, on a CPU."""
    accelerator = Accelerator(cpu=True)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    model = tiny_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused)
    return Trainer(
        model,
        optimizer,
        PoisonedLoss(bad_batches),
        callbacks=list(callbacks),
        accelerator=accelerator,
        progress_bar=False,
        log_every_n_steps=100,
        **kwargs,
    )


def loader(n: int = 64, batch: int = 8) -> DataLoader:
    return DataLoader(tiny_classification_data(n), batch_size=batch)


class Record(Callback):
    def __init__(self) -> None:
        self.skipped: list[bool] = []

    def on_train_batch_end(self, trainer: Trainer) -> None:
        self.skipped.append(trainer.state.step_skipped)


# ----------------------------------------------------------------------------- 1 and 9: sharded strategies
@pytest.mark.parametrize("kind", [DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM])
def test_sharded_strategies_are_refused_at_construction(monkeypatch, kind):
    """Items 1 and 9: FSDP (double unscale when clipping, a main-only collective in the
    checkpoint) and DeepSpeed are refused before anything is prepared, naming DDP."""
    accelerator = Accelerator(cpu=True)
    monkeypatch.setattr(Accelerator, "distributed_type", property(lambda self: kind))
    model = tiny_mlp()
    with pytest.raises(TrainerError, match="DDP"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), accelerator=accelerator)


def test_clipping_never_unscales_twice():
    """Item 1: clipping after the loop's unscale must not go through Accelerate's clip_grad_norm_,
    which unscales again (and raises under a scaler)."""
    trainer = scaled_trainer(fused=False, bad_batches=set(), max_grad_norm=0.5)
    calls = []
    trainer.accelerator.clip_grad_norm_ = lambda *a, **k: calls.append(a)  # type: ignore[method-assign]
    trainer.fit(loader(32))
    assert calls == []
    assert trainer.state.global_step == 4


# ----------------------------------------------------------------------------- 2: fused optimizers
@pytest.mark.parametrize("fused", [False, True])
def test_skipped_fp16_steps_are_seen_with_fused_optimizers(fused):
    """Item 2: with fused=True the scaler always calls optimizer.step(); the skip must still be
    seen, and the schedule and warmup must not advance on it."""
    record = Record()
    schedule = LearningRateScheduler(
        lr_at=lambda step, lr: lr * 0.5**step, interval="step", warmup=3, warmup_interval="step"
    )
    trainer = scaled_trainer(fused, bad_batches={1, 2, 5}, callbacks=[record, schedule])
    trainer.fit(loader(64))  # 8 optimizer steps, 3 of them skipped
    assert record.skipped == [False, True, True, False, False, True, False, False]
    state = schedule.state_dict()
    assert state["ticks"] == 5
    assert state["warmup_done"] == 3


# ----------------------------------------------------------------------------- 7: TerminateOnNaN, skipped steps
def test_terminate_on_nan_stops_after_too_many_skipped_steps():
    """Item 7: a finite loss with NaN gradients makes the scaler skip every step; stop past the bound."""
    guard = TerminateOnNaN(max_skipped_steps=3)
    trainer = scaled_trainer(fused=False, bad_batches=set(range(2, 100)), callbacks=[guard])
    with pytest.raises(NonFiniteError, match="skipped 4 optimizer steps in a row"):
        trainer.fit(loader(64))
    assert trainer.state.global_step == 6


def test_terminate_on_nan_resets_the_count_on_a_good_step():
    guard = TerminateOnNaN(max_skipped_steps=2)
    trainer = scaled_trainer(fused=True, bad_batches={0, 1, 3, 4, 6, 7}, callbacks=[guard])
    trainer.fit(loader(64))
    assert trainer.state.global_step == 8


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_terminate_on_nan_checks_max_skipped_steps(bad):
    with pytest.raises(TrainerError, match="max_skipped_steps"):
        TerminateOnNaN(max_skipped_steps=bad)


# ----------------------------------------------------------------------------- 4: deterministic histograms
def test_device_histograms_never_use_histc(monkeypatch):
    """Item 4: histc has no deterministic CUDA kernel; every path bins with bincount."""

    def refuse(*args, **kwargs):
        raise RuntimeError("histc does not have a deterministic implementation")

    monkeypatch.setattr(torch, "histc", refuse)
    x = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    (hist,) = histogram.compute_histograms([x], bins=300)  # more than 255 bins: the non-uint8 path
    assert hist is not None and sum(hist.bucket_counts) == 5000


def test_bincount_bins_equal_histc():
    g = torch.Generator().manual_seed(1)
    for scale in (1.0, 3.0, 1e-3):
        x = torch.randn(20_000, generator=g) * scale
        low, high = float(x.min()), float(x.max())
        for bins in (1, 7, 30, 300):
            assert torch.equal(histogram.bincount_bins(x, bins, low, high), torch.histc(x, bins, low, high))


# ----------------------------------------------------------------------------- 6: CUDA RNG of the own device
class FakeCuda:
    """Stands in for torch.cuda: `count` devices, this process on `current`."""

    def __init__(self, count: int, current: int) -> None:
        self.count, self.current = count, current
        self.states = {i: torch.full((8,), i, dtype=torch.uint8) for i in range(count)}
        self.all_read = False

    def install(self, monkeypatch) -> None:
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(cuda, "get_rng_state", lambda device="cuda": self.states[int(device)].clone())
        monkeypatch.setattr(cuda, "get_rng_state_all", self._get_all)
        monkeypatch.setattr(cuda, "set_rng_state", self._set)
        monkeypatch.setattr(cuda, "set_rng_state_all", lambda states: self.states.update(enumerate(states)))

    def _get_all(self):
        self.all_read = True
        return [self.states[i].clone() for i in range(self.count)]

    def _set(self, state, device="cuda"):
        self.states[int(device)] = state.clone()


def test_cuda_rng_saves_and_restores_the_own_device(monkeypatch):
    """Item 6: one state, of this process's device; restored onto its device at resume
    even when the number of visible devices changed."""
    saved = FakeCuda(count=8, current=3)
    saved.install(monkeypatch)
    states = codec.capture_rng_states()
    assert not saved.all_read and states["cuda"] == []
    assert states["cuda_device"]["index"] == 3
    resumed = FakeCuda(count=2, current=1)  # another machine: 2 GPUs, this process on cuda:1
    resumed.install(monkeypatch)
    codec.apply_rng_states(states)
    assert resumed.states[1].tolist() == [3] * 8
    assert resumed.states[0].tolist() == [0] * 8


def test_old_checkpoints_restore_the_own_device_or_say_why_not(monkeypatch):
    """Item 6: a 0.1 checkpoint holds every visible device's state under `cuda`."""
    states = codec.capture_rng_states()
    states.pop("cuda_device", None)
    states["cuda"] = [codec._b64(torch.full((8,), i, dtype=torch.uint8)) for i in range(2)]
    fake = FakeCuda(count=4, current=1)
    fake.install(monkeypatch)
    codec.apply_rng_states(states)  # 2 saved, 4 here: this process's device 1 is among them
    assert fake.states[1].tolist() == [1] * 8
    fake = FakeCuda(count=4, current=3)
    fake.install(monkeypatch)
    with pytest.warns(RuntimeWarning, match="none for this process's cuda:3"):
        codec.apply_rng_states(states)


def test_cuda_rng_state_without_cuda_is_reported(monkeypatch):
    states = codec.capture_rng_states()
    states["cuda_device"] = {"index": 0, "state": codec._b64(torch.zeros(8, dtype=torch.uint8))}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="CUDA is not available here"):
        codec.apply_rng_states(states)


# ----------------------------------------------------------------------------- 8: deterministic=True
def test_deterministic_option_configures_torch_cudnn_and_cublas(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        torch.backends.cudnn.benchmark = True
        model = tiny_mlp()
        trainer = Trainer(
            model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), cpu=True, deterministic=True
        )
        assert trainer.deterministic
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1], before[2]


def test_deterministic_warn_only_and_bad_values():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        model = tiny_mlp()
        Trainer(
            model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), cpu=True, deterministic="warn"
        )
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        with pytest.raises(TrainerError, match="deterministic must be"):
            Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), deterministic="yes")
    finally:
        torch.use_deterministic_algorithms(before)


# ----------------------------------------------------------------------------- 10: workers, pinning, tensor LRs
def test_default_workers_share_the_cores_among_local_processes(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_workers() == 1  # 2 cores each: one feeds the GPU, one loads
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_workers() == 3


def test_memory_is_not_pinned_when_the_cpu_is_forced(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    assert not make_loader(tiny_classification_data(8), 4, shuffle=False, workers=0).pin_memory
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    assert make_loader(tiny_classification_data(8), 4, shuffle=False, workers=0).pin_memory


def test_cli_does_not_pin_when_accelerate_use_cpu(monkeypatch, tmp_path):
    from callbacks_kit.cli import build_parser
    from callbacks_kit.cli import job as job_module
    from callbacks_kit.cli import train as train_module

    pins = []

    def fake_make_loader(*args, pin_memory=None, **kwargs):
        pins.append(pin_memory)
        raise SystemExit(0)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    monkeypatch.setattr(job_module, "make_loader", fake_make_loader)
    args = build_parser().parse_args(["train", "--log-dir", str(tmp_path), "--train-samples", "8"])
    with pytest.raises(SystemExit):
        train_module.train(args)
    assert pins == [False]


def test_tensor_group_settings_are_restored_on_their_device():
    """Item 10: a tensor LR (fused or capturable optimizers on a GPU) goes back where it was, not to the CPU."""
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = LearningRateScheduler(lr_at=lambda step, lr: lr)
    schedule.on_fit_start(
        SimpleNamespace(
            optimizer=optimizer, val_loader=None, state=SimpleNamespace(batches_per_epoch=None, max_epochs=1)
        )
    )
    saved = schedule.state_dict()
    saved["groups"][0]["lr"] = codec.tag_json(torch.tensor(0.05))
    optimizer.param_groups[0]["lr"] = torch.tensor(0.1, device="meta")  # a device that is not the CPU
    schedule.load_state_dict(saved)
    assert optimizer.param_groups[0]["lr"].device.type == "meta"


# ----------------------------------------------------------------------------- 3 and 5: benchmark
def test_fp16_sync_allowance_is_one_per_step():
    from benchmarks.syncs import FP16_SYNCS_PER_STEP, allowed_syncs

    assert FP16_SYNCS_PER_STEP == 1
    assert allowed_syncs("fp16") == 1 and allowed_syncs("bf16") == 0 and allowed_syncs("no") == 0


def test_callback_timings_wait_for_the_device(monkeypatch):
    """Item 5: each timed callback call reads a synced clock before and after it."""
    from benchmarks import callbacks as bench_callbacks

    reads = []
    monkeypatch.setattr(bench_callbacks, "synced_time", lambda device: reads.append(device) or 0.0)
    timer = bench_callbacks.EventTimer(torch.device("cpu"))
    (first, timed, last) = timer.instrument([Callback()])
    timed.on_train_batch_end(None)
    assert reads == [torch.device("cpu")] * 2
    first.on_train_batch_end(None)
    assert len(reads) == 3


def test_image_folder_benchmark_trains_on_the_given_device(monkeypatch):
    """Item 5: the ResNet-18 steps run where the benchmark runs, and their clock waits for it."""
    from benchmarks import inputs

    devices = []
    monkeypatch.setattr(inputs, "synced_time", lambda device: devices.append(device) or float(len(devices)))
    args = SimpleNamespace(quick=True)
    result = inputs.bench_image_folder(args, workers=0, device=torch.device("cpu"))
    assert result["device"] == "cpu"
    assert devices and all(d == torch.device("cpu") for d in devices)


# ----------------------------------------------------------------------------- the GPU script on a CPU
def test_gpu_check_script_skips_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO), "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no CUDA GPU: skipped" in result.stdout


@pytest.mark.slow
def test_gpu_check_script_dry_run_runs_its_cpu_safe_checks():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO), "PYTHON": sys.executable}
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_check.sh")], check=True)  # it parses
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                            text=True, env=env, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS  async checkpoint: snapshot into reused pinned host buffers" in result.stdout
    assert "PASS  async checkpoint stall per save" in result.stdout
    assert "SKIP  fp16 training steps with loss scaling" in result.stdout and "gpu_check: all passed" in result.stdout
