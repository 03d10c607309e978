"""Section 7, weight EMA: the cost of one `EMA` update against one ResNet-18 training step.

The step is a forward, backward and AdamW step on a batch of 64 images of 64 px (the main
job's defaults on the shapes data); the update is `EMA.on_train_batch_end` on the same
model (`AveragedModel.update_parameters` with PyTorch's foreach EMA function), run after
every step as `--ema` does. Both are timed in the same loop, interleaved, so a change in the
machine's load hits both. Budget: the update costs at most 10% of the step.
"""

from __future__ import annotations

import statistics
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from benchmarks.common import EMA_SHARE_BUDGET, LR, Bench, print_table, synced_time
from callbacks_kit import EMA


def bench_ema(device: torch.device, steps: int, batch: int, size: int) -> dict[str, Any]:
    """Median seconds of a ResNet-18 training step and of an EMA update after it."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    ema = EMA(0.999)
    # The two things EMA reads from a trainer, without the rest of one.
    trainer: Any = SimpleNamespace(
        unwrapped_model=model,
        state=SimpleNamespace(optimizer_stepped=True, step_skipped=False, global_step=1),
    )
    ema.on_fit_start(trainer)
    step_s, update_s = [], []
    for i in range(steps + 2):  # the first two warm up
        start = synced_time(device)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        middle = synced_time(device)
        ema.on_train_batch_end(trainer)
        end = synced_time(device)
        if i >= 2:
            step_s.append(middle - start)
            update_s.append(end - middle)
    step, update = statistics.median(step_s), statistics.median(update_s)
    params = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    return {
        "model": "resnet18",
        "batch": batch,
        "image_size": size,
        "steps": steps,
        "values_averaged": params,
        "median_step_s": step,
        "median_update_s": update,
        "share": update / step,
    }


def run(bench: Bench) -> None:
    """Time, print, and check the budget."""
    steps, batch, size = (3, 8, 32) if bench.args.quick else (20, 64, 64)
    result = bench.results["ema"] = bench_ema(bench.device, steps, batch, size)
    print_table(
        f"9. Weight EMA: one update against one ResNet-18 step (batch {batch}, {size} px, median of {steps})",
        ["what", "median ms", "share of the step"],
        [
            ["training step (forward, backward, AdamW)", f"{result['median_step_s'] * 1e3:.1f}", "1.000"],
            [
                "EMA update (foreach lerp of every weight and buffer)",
                f"{result['median_update_s'] * 1e3:.2f}",
                f"{result['share']:.3f}",
            ],
        ],  # fmt: skip
    )
    bench.check("EMA update / ResNet-18 step", result["share"], EMA_SHARE_BUDGET, enforced=bench.enforce)
