"""EMA resume and the LR range test in real processes (run by torchrun in tests/test_ema_lr_distributed.py).

In one launch: an uninterrupted run with EMA; a run stopped after step 5 and resumed from its
checkpoint by a new Trainer; then an LR range test. Rank 0 writes the final weights and EMA
weights of both runs to `--out`/weights-*.safetensors; every rank writes what its LR test saw
to `--out`/lr-rank<r>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import safetensors.torch
import torch
from helpers.checkpoints import StepLRCallback, StopAtStep, loaders, make_trainer, weights

from callbacks_kit import EMA, ModelCheckpoint, Trainer
from callbacks_kit.lr_finder import LRFinder


def with_ema(trainer: Trainer, ema: EMA) -> dict[str, torch.Tensor]:
    ema_weights = {f"ema.{k}": v.detach().cpu().clone() for k, v in ema.averaged_weights().items()}
    return {**weights(trainer), **ema_weights}


def ema_runs(directory: Path, out: Path, epochs: int) -> None:
    reference_ema = EMA(decay=0.9, every_n_steps=2)
    reference = make_trainer([reference_ema, StepLRCallback()])
    reference.fit(*loaders(), epochs=epochs)
    first = make_trainer([EMA(decay=0.9, every_n_steps=2), StepLRCallback(), ModelCheckpoint(directory), StopAtStep(5)])
    first.fit(*loaders(), epochs=epochs)
    torch.manual_seed(999 + first.accelerator.process_index)  # a new process would start elsewhere
    resumed_ema = EMA(decay=0.9, every_n_steps=2)
    resumed = make_trainer([resumed_ema, StepLRCallback(), ModelCheckpoint(directory)], seed=123)
    resumed.fit(*loaders(), epochs=epochs, resume_from="last")
    if reference.is_main_process:
        safetensors.torch.save_file(with_ema(reference, reference_ema), str(out / "weights-reference.safetensors"))
        safetensors.torch.save_file(with_ema(resumed, resumed_ema), str(out / "weights-resumed.safetensors"))
        metrics = {"reference": reference.state.metrics, "resumed": resumed.state.metrics}
        (out / "metrics.json").write_text(json.dumps(metrics))


def lr_test(out: Path) -> None:
    trainer = make_trainer([])
    local: list[float] = []
    loss_fn = trainer.loss_fn

    def recording(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = loss_fn(outputs, targets)
        local.append(float(loss))
        return loss

    trainer.loss_fn = recording
    before = weights(trainer)
    result = LRFinder(min_lr=1e-4, max_lr=100.0, steps=30).run(trainer, loaders()[0])
    restored = all(torch.equal(v, weights(trainer)[k]) for k, v in before.items())
    rank = trainer.accelerator.process_index
    doc = {"lrs": result.lrs, "losses": result.losses, "local": local, "suggestion": result.suggestion,
           "restored": restored, "processes": trainer.accelerator.num_processes}  # fmt: skip
    (out / f"lr-rank{rank}.json").write_text(json.dumps(doc))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    ema_runs(args.dir, args.out, args.epochs)
    lr_test(args.out)
    print("finished", flush=True)


if __name__ == "__main__":
    main()
