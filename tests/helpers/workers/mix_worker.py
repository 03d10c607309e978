"""MixUp/CutMix exact resume in real processes (torchrun): a reference run and a stopped one, or the resume.

`--phase first`: an uninterrupted run (final weights to `--reference`), then a run stopped after
step `--stop-at` that checkpoints into `--dir`. `--phase resume`: fresh processes resume `--dir`
from other RNG states and write their final weights to `--out`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from helpers.checkpoints import StopAtStep, save_weights
from helpers.mixing import EPOCHS, mix_loaders, mix_trainer

from callbacks_kit import ModelCheckpoint


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", choices=["first", "resume"], required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--stop-at", type=int, default=5)
    parser.add_argument("--reference")
    parser.add_argument("--out")
    args = parser.parse_args()
    folder = Path(args.dir)
    if args.phase == "first":
        reference = mix_trainer([ModelCheckpoint(folder / "reference")])
        reference.fit(*mix_loaders(), epochs=EPOCHS)
        if reference.is_main_process:
            save_weights(reference, args.reference)
        stopped = mix_trainer([ModelCheckpoint(folder / "ckpt"), StopAtStep(args.stop_at)])
        stopped.fit(*mix_loaders(), epochs=EPOCHS)
        print(f"stopped at step {stopped.state.global_step}", flush=True)
        return
    torch.manual_seed(999)  # a fresh process would start from other RNG states: make that so
    resumed = mix_trainer([ModelCheckpoint(folder / "ckpt")], seed=123)
    resumed.fit(*mix_loaders(), epochs=EPOCHS, resume_from="last")
    if resumed.is_main_process:
        save_weights(resumed, args.out)
    print(f"finished at step {resumed.state.global_step}", flush=True)


if __name__ == "__main__":
    main()
