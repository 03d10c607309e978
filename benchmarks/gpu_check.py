"""The checks that need a CUDA GPU, run by `scripts/gpu_check.sh`: each prints its name and result.

Exits 1 when any check fails, 0 when all pass, and 0 with "no CUDA GPU: skipped" on a
machine without CUDA. Tiny models and a few steps each, so the whole run takes a few
minutes on one GPU; `--no-throughput` leaves out the ResNet-50 images/s comparison (the
longest part). The CPU-testable logic of the same paths is in tests/test_cuda_paths.py;
these run it where it matters: fp16 loss scaling, fused optimizers, syncs under CUDA's
sync debug mode, deterministic kernels, and CUDA RNG states in checkpoints.

    bash scripts/gpu_check.sh              # or: python -m benchmarks.gpu_check
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

Check = Callable[[], str]
CHECKS: list[tuple[str, Check]] = []
CPU_SAFE: set[str] = set()  # checks that also run on a CPU, with tiny sizes, under --dry-run
DEVICE = torch.device("cuda")  # the device of the CPU-safe checks; the CPU under --dry-run


def check(name: str, cpu_safe: bool = False) -> Callable[[Check], Check]:
    """Register a check: it returns a short detail on success and raises on failure."""

    def register(fn: Check) -> Check:
        CHECKS.append((name, fn))
        if cpu_safe:
            CPU_SAFE.add(name)
        return fn

    return register


def _data(n: int = 64, features: int = 8, classes: int = 3, seed: int = 0) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    return torch.utils.data.TensorDataset(x, (x @ torch.randn(features, classes, generator=g)).argmax(1))


def _loader(n: int = 64, shuffle: bool = False) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(_data(n), batch_size=8, shuffle=shuffle)


def _mlp(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 3))


class _Poisoned(nn.Module):
    """Cross-entropy whose gradient is NaN on chosen training batches while the loss stays finite."""

    def __init__(self, bad: set[int], nan_loss: bool = False) -> None:
        super().__init__()
        self.bad, self.nan_loss, self.calls = bad, nan_loss, 0

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(outputs.float(), targets)
        if not torch.is_grad_enabled():
            return loss
        bad = self.calls in self.bad
        self.calls += 1
        if bad and self.nan_loss:
            return loss * float("nan")
        return loss + torch.sqrt(outputs.float().sum() * 0.0) if bad else loss


def _trainer(
    precision: str,
    loss: nn.Module | None = None,
    callbacks: Sequence[Any] = (),
    fused: bool = False,
    init_scale: float | None = None,
    **kwargs: Any,
) -> Any:
    """A Trainer of a small MLP; `init_scale` sets the fp16 scaler's first scale.

    The checks that expect skips at given steps start from a small scale, so that no step
    overflows by itself while the scale comes down from 65536.
    """
    from accelerate import Accelerator
    from accelerate.utils import GradScalerKwargs

    from callbacks_kit import Trainer
    from callbacks_kit.compat import reset_accelerator_singletons

    if init_scale is not None:
        reset_accelerator_singletons()
        kwargs["accelerator"] = Accelerator(
            mixed_precision=precision, kwargs_handlers=[GradScalerKwargs(init_scale=init_scale)]
        )
    model = _mlp()
    return Trainer(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused),
        loss or nn.CrossEntropyLoss(),
        callbacks=list(callbacks),
        mixed_precision=precision,
        progress_bar=False,
        log_every_n_steps=4,
        **kwargs,
    )


@check("bf16 training steps")
def bf16_steps() -> str:
    """The check named above."""
    trainer = _trainer("bf16")
    trainer.fit(_loader(), epochs=2)
    loss = trainer.state.metrics["train/epoch_loss"]
    assert trainer.device.type == "cuda" and trainer.state.global_step == 16 and loss == loss, trainer.state
    return f"16 steps, epoch loss {loss:.4f}"


@check("fp16 training steps with loss scaling and clipping (no double unscale)")
def fp16_steps() -> str:
    """The check named above."""
    trainer = _trainer("fp16", max_grad_norm=1.0)
    trainer.fit(_loader(), epochs=2)
    scaler = trainer.accelerator.scaler
    assert scaler is not None and trainer.state.global_step == 16
    return f"16 steps, loss scale {scaler.get_scale():.0f}"


def _skipped_steps(fused: bool) -> str:
    from callbacks_kit import Callback, LearningRateScheduler

    seen: list[bool] = []

    class Record(Callback):
        def on_train_batch_end(self, trainer: Any) -> None:
            seen.append(trainer.state.step_skipped)

    schedule = LearningRateScheduler(
        lr_at=lambda step, lr: lr * 0.9**step, interval="step", warmup=2, warmup_interval="step"
    )
    trainer = _trainer("fp16", _Poisoned({1, 2, 5}), [Record(), schedule], fused=fused, init_scale=16.0)
    trainer.fit(_loader())
    expected = [i in {1, 2, 5} for i in range(8)]
    assert seen == expected, f"step_skipped {seen}, expected {expected}"
    state = schedule.state_dict()
    assert state["ticks"] == 5 and state["warmup_done"] == 2, state
    return "3 skipped steps seen; the schedule stepped 5 times of 8"


@check("fp16 skipped steps not counted by LearningRateScheduler (AdamW)")
def skipped_unfused() -> str:
    """The check named above."""
    return _skipped_steps(fused=False)


@check("fp16 skipped steps not counted by LearningRateScheduler (AdamW fused=True)")
def skipped_fused() -> str:
    """The check named above."""
    return _skipped_steps(fused=True)


@check("TerminateOnNaN fp16 branch: a NaN loss stops the run")
def terminate_nan_loss() -> str:
    """The check named above."""
    from callbacks_kit import TerminateOnNaN
    from callbacks_kit.errors import NonFiniteError

    trainer = _trainer("fp16", _Poisoned({3}, nan_loss=True), [TerminateOnNaN()], init_scale=16.0)
    try:
        trainer.fit(_loader())
    except NonFiniteError as exc:
        assert "optimizer step 4" in str(exc), exc
        return "NonFiniteError at optimizer step 4"
    raise AssertionError("no NonFiniteError")


@check("TerminateOnNaN fp16 branch: NaN gradients under a finite loss stop after max_skipped_steps")
def terminate_skipped() -> str:
    """The check named above."""
    from callbacks_kit import TerminateOnNaN
    from callbacks_kit.errors import NonFiniteError

    trainer = _trainer("fp16", _Poisoned(set(range(1, 100))), [TerminateOnNaN(max_skipped_steps=4)], init_scale=16.0)
    try:
        trainer.fit(_loader(), epochs=2)
    except NonFiniteError as exc:
        assert "skipped 5 optimizer steps in a row" in str(exc), exc
        return f"stopped at step {trainer.state.global_step}"
    raise AssertionError("no NonFiniteError")


def _main_job_syncs(precision: str) -> str:
    from benchmarks.syncs import allowed_syncs, main_job_cuda_syncs

    row = main_job_cuda_syncs(precision)
    allowed = allowed_syncs(precision)
    assert row["non_logging_steps"] > 0, row
    assert row["max_syncs_non_logging"] <= allowed, f"{row['max_syncs_non_logging']} > {allowed}: {row['where']}"
    if precision == "fp16":  # the scaler's own read must be seen, or the counting does not work
        assert row["max_syncs_non_logging"] == allowed, f"the GradScaler's sync was not counted: {row}"
    return f"{row['non_logging_steps']} non-logging steps, at most {row['max_syncs_non_logging']} sync(s) each"


@check("syncs on non-logging steps, main job callbacks, bf16 (allowed 0)")
def syncs_bf16() -> str:
    """The check named above."""
    return _main_job_syncs("bf16")


@check("syncs on non-logging steps, main job callbacks, fp16 (allowed 1: GradScaler)")
def syncs_fp16() -> str:
    """The check named above."""
    return _main_job_syncs("fp16")


@check("device histograms under torch.use_deterministic_algorithms(True)")
def deterministic_histograms() -> str:
    """The check named above."""
    from callbacks_kit.inspection.histogram import compute_histograms

    x = torch.randn(100_000, generator=torch.Generator().manual_seed(0))
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        on_gpu = compute_histograms([x.cuda()], bins=30) + compute_histograms([x.cuda()], bins=300)
    finally:
        torch.use_deterministic_algorithms(before)
    on_cpu = compute_histograms([x], bins=30) + compute_histograms([x], bins=300)
    for gpu, cpu in zip(on_gpu, on_cpu, strict=True):
        assert gpu is not None and cpu is not None and sum(gpu.bucket_counts) == x.numel()
        moved = sum(abs(a - b) for a, b in zip(gpu.bucket_counts, cpu.bucket_counts, strict=True))
        assert moved <= 4, f"{moved} values in other buckets than on the CPU"
    return "30 and 300 bins, counts as on the CPU"


@check("CUDA RNG state: this process's device saved and restored")
def cuda_rng() -> str:
    """The check named above."""
    from callbacks_kit.checkpoint.codec import apply_rng_states, capture_rng_states

    torch.cuda.init()
    states = capture_rng_states()
    assert states["cuda_device"]["index"] == torch.cuda.current_device(), states.get("cuda_device")
    first = torch.rand(4, device="cuda")
    apply_rng_states(states)
    again = torch.rand(4, device="cuda")
    assert torch.equal(first, again)
    return f"cuda:{torch.cuda.current_device()} restored"


@check("deterministic=True: a resumed run equals an uninterrupted one bit for bit (conv + dropout)")
def deterministic_resume() -> str:
    """The check named above."""
    from callbacks_kit import Callback, ModelCheckpoint, Trainer

    class StopAt(Callback):
        def __init__(self, step: int) -> None:
            self.step = step

        def on_train_batch_end(self, trainer: Any) -> None:
            if trainer.state.optimizer_stepped and trainer.state.global_step == self.step:
                trainer.state.should_stop = True

    def conv_net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.AvgPool2d(16),  # AdaptiveAvgPool2d has no deterministic CUDA backward: it would raise
            nn.Flatten(),
            nn.Linear(8, 3),
        )

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 3, 16, 16, generator=g), torch.randint(3, (64,), generator=g))

    def run(folder: Path, callbacks: list[Any], resume: str | None = None) -> nn.Module:
        model = conv_net()
        trainer = Trainer(
            model,
            torch.optim.AdamW(model.parameters(), lr=1e-2),
            nn.CrossEntropyLoss(),
            callbacks=[ModelCheckpoint(folder), *callbacks],
            seed=0,
            progress_bar=False,
            deterministic=True,
        )
        loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)
        trainer.fit(loader, epochs=2, resume_from=resume)
        return trainer.unwrapped_model

    with tempfile.TemporaryDirectory() as root:
        reference = run(Path(root, "ref"), [])
        run(Path(root, "cut"), [StopAt(5)])
        torch.manual_seed(123)
        resumed = run(Path(root, "cut"), [], resume="last")
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{name} differs by {(a.float() - b.float()).abs().max():.3g}"
    return "all weights and buffers equal after stopping at step 5 of 16"


@check("async checkpoint: snapshot into reused pinned host buffers, equal to the device tensors", cpu_safe=True)
def snapshot_buffers() -> str:
    """The check named above."""
    from callbacks_kit.checkpoint.snapshot import HostSnapshot

    live = {"w": torch.randn(1024, 1024, device=DEVICE), "b": torch.randn(1024, device=DEVICE).bfloat16()}
    snapshot = HostSnapshot()
    first = snapshot.copy(live, "model")
    snapshot.ready()
    pointers = {k: v.data_ptr() for k, v in first.items()}
    live["w"].add_(1.0)  # queued after the copy: the snapshot keeps the old values
    second = snapshot.copy(live, "model")
    snapshot.ready()
    for key, host in second.items():
        assert host.device.type == "cpu" and host.is_pinned() == (DEVICE.type == "cuda"), (key, host.is_pinned())
        assert torch.equal(host, live[key].cpu()), key
    assert {k: v.data_ptr() for k, v in second.items()} == pointers, "the buffers were not reused"
    return f"{snapshot.nbytes / 1e6:.1f} MB of {'pinned ' if DEVICE.type == 'cuda' else ''}buffers, reused"


@check("async checkpoint stall per save <= 15% of a synchronous save (ResNet-18 + AdamW)", cpu_safe=True)
def checkpoint_stall() -> str:
    """The check named above."""
    from benchmarks.checkpoints import ASYNC_STALL_BUDGET, bench_checkpoints
    from benchmarks.common import Bench
    from benchmarks.workloads import small_cnn

    quick = DEVICE.type == "cpu"  # --dry-run: runs the code on a small CNN, the figures mean nothing
    args = argparse.Namespace(quick=quick, repeats=1 if quick else 5)
    bench = Bench(args, DEVICE, "bf16" if DEVICE.type == "cuda" else "no", {"budgets": []})
    rows = {r["mode"]: r for r in bench_checkpoints(bench, small_cnn() if quick else None)["rows"]}
    sync, asynchronous = rows["synchronous save"]["stall_s"], rows["asynchronous save"]["stall_s"]
    ratio = asynchronous / sync if sync > 0 else float("inf")
    detail = f"sync {sync:.3f} s, async {asynchronous:.3f} s per save ({ratio:.3f}x)"
    assert quick or ratio <= ASYNC_STALL_BUDGET, detail
    return detail


@check("ResNet-50 images/s: Trainer with the main job's default callbacks against a hand-written loop")
def throughput() -> str:
    """The check named above."""
    from benchmarks.throughput import bench_throughput

    rows = bench_throughput(argparse.Namespace(gpu_batch=64), torch.device("cuda"))["rows"]
    parts = [
        f"{r['precision']}: hand {r['hand_images_per_s']:.0f}, Trainer {r['trainer_images_per_s']:.0f} images/s "
        f"(ratio {r['ratio']:.3f})"
        for r in rows
    ]
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every check; 1 when any failed, 0 otherwise or without CUDA."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-throughput", action="store_true", help="leave out the ResNet-50 images/s comparison")
    parser.add_argument(
        "--dry-run", action="store_true", help="run the CPU-safe checks on the CPU (tiny sizes), list the rest"
    )
    args = parser.parse_args(argv)
    global DEVICE
    if args.dry_run:
        DEVICE = torch.device("cpu")
        print(f"gpu_check --dry-run on the CPU: {len(CPU_SAFE)} of {len(CHECKS)} checks run here, the rest need CUDA")
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU: skipped")
        return 0
    else:
        print(f"gpu_check on {torch.cuda.get_device_name()}, torch {torch.__version__}")
    failed = 0
    for name, fn in CHECKS:
        if args.no_throughput and fn is throughput:
            continue
        if args.dry_run and name not in CPU_SAFE:
            print(f"SKIP  {name}: needs CUDA", flush=True)
            continue
        start = time.perf_counter()
        try:
            detail = fn()
            print(f"PASS  {name}: {detail} ({time.perf_counter() - start:.1f} s)", flush=True)
        except Exception as exc:  # every failure is reported, then the next check runs
            failed += 1
            print(f"FAIL  {name}: {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc(file=sys.stdout)
        finally:
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode("default")
    print(f"gpu_check: {len(CHECKS) - failed} passed, {failed} failed" if failed else "gpu_check: all passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
