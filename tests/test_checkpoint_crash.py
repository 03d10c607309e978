"""SIGKILL at random moments of a run that saves at every step: `last` always loads, nothing is
lost, and the run that finally completes is bit-identical to one that was never killed.
"""

from __future__ import annotations

import os
import random
import time

import pytest
import safetensors.torch
from helpers.checkpoints import assert_identical, reference_weights, run_worker, start_worker, wait_for_line

from callbacks_kit.checkpoint.restore import read_checkpoint, resolve_checkpoint

KILLS = 6
# A wider model makes each save (~4 MB with the optimizer moments) take most of each step's time.
# 12 epochs of 8 steps: the kills use at most KILLS * (MAX_STEPS_BEFORE_KILL + 1) of the 96 steps.
ARGS = ("--epochs", "12", "--width", "30000")
MAX_STEPS_BEFORE_KILL = 4


@pytest.mark.slow
def test_repeated_sigkill_during_saves_never_leaves_last_unloadable(tmp_path):
    directory = tmp_path / "ckpt"
    rng = random.Random(1234)
    progress: list[int] = []
    for _ in range(KILLS):
        process = start_worker("--dir", str(directory), "--every-n-steps", "1", "--resume", "last", *ARGS)
        seen: list[str] = []
        wait_for_line(process, "ready", seen)  # the resume is done; saving starts with the first step
        # Kill a few steps into the run, at a random moment of a step (its save may be in flight), however
        # fast the machine: the kill is timed by the steps the worker reports, not by the clock alone.
        for _ in range(rng.randint(1, MAX_STEPS_BEFORE_KILL)):
            wait_for_line(process, "step ", seen)
        time.sleep(rng.uniform(0.0, 0.05))
        process.kill()
        process.communicate(timeout=60)
        assert process.returncode == -9, "".join(seen)  # it was killed, not finished before the kill
        assert not any(line.startswith("finished") for line in seen), "".join(seen)
        folder = resolve_checkpoint("last", directory)
        if folder is None:
            assert not progress, "a committed checkpoint was lost"
            continue
        step = read_checkpoint(folder).meta["global_step"]  # verifies every byte against meta.json
        assert not progress or step >= progress[-1], f"went back from step {progress[-1]} to {step}"
        progress.append(step)
    assert progress and progress[-1] > 0
    out = tmp_path / "final.safetensors"
    run_worker("--dir", str(directory), "--resume", "last", "--out", str(out), *ARGS)
    assert not [p.name for p in directory.iterdir() if p.name.startswith(".")]  # leftovers cleaned
    assert_identical(safetensors.torch.load_file(str(out)), reference_weights(*ARGS))
    print(f"last checkpoint after each kill: steps {progress}")


PHASES = [
    "write:model.safetensors",  # a half-written file in the temporary folder
    "write:meta.json",  # every data file written, not yet described
    "rename:.tmp-",  # committed, last.json not yet updated
    "write:.tmp-last.json",  # a half-written new pointer
    "replace:last.json",  # pointer updated, the older folders not yet pruned
    "rename:.trash-",  # an older folder moved aside, not yet deleted
]


@pytest.mark.slow
def test_sigkill_in_every_phase_of_a_save(tmp_path):
    directory = tmp_path / "ckpt"
    args = ("--epochs", "4")
    steps: list[int] = []
    for phase in PHASES:  # each run resumes from the previous one and dies in its 3rd save
        process = start_worker("--dir", str(directory), "--every-n-steps", "1", "--resume", "last",
                               "--die-during-save", phase, *args)  # fmt: skip
        output, _ = process.communicate(timeout=120)
        assert process.returncode == -9, output
        step = read_checkpoint(resolve_checkpoint("last", directory)).meta["global_step"]
        assert step > (steps[-1] if steps else 0), (phase, steps, step)  # two saves committed each time
        steps.append(step)
    out = tmp_path / "final.safetensors"
    run_worker("--dir", str(directory), "--resume", "last", "--out", str(out), *args)
    assert_identical(safetensors.torch.load_file(str(out)), reference_weights(*args))


def _listing(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != ".lock")  # a killed run leaves its lock file


@pytest.mark.slow
def test_a_kill_while_best_safetensors_is_replaced_is_repaired_on_resume(tmp_path):
    directory = tmp_path / "ckpt"
    args = ("--epochs", "2", "--scores", "0.1,0.5")  # epoch 2 is the best
    first, best = "epoch=0001-step=00000008", "epoch=0002-step=00000016"
    # killed right after last.json names epoch 2: before best.safetensors is replaced and epoch 1 pruned
    process = start_worker("--dir", str(directory), "--die-during-save", "replace:last.json", "--die-at-match", "2",
                           *args)  # fmt: skip
    output, _ = process.communicate(timeout=120)
    assert process.returncode == -9, output
    assert resolve_checkpoint("last", directory).name == best and (directory / first).is_dir()
    best_file = directory / "best.safetensors"
    assert best_file.read_bytes() == (directory / first / "model.safetensors").read_bytes()  # the older model
    result = run_worker("--dir", str(directory), "--resume", "last", *args)  # nothing left to train
    assert f"removed {first} from {directory}" in result.stdout, result.stdout
    assert f"{best_file} did not hold the weights of the best checkpoint, '{best}'" in result.stdout
    assert best_file.read_bytes() == (directory / best / "model.safetensors").read_bytes()  # the record's best
    assert _listing(directory) == ["best.safetensors", best, "last.json"] == sorted(os.listdir(directory))


@pytest.mark.slow
def test_a_folder_committed_before_last_json_named_it_is_removed_on_resume_not_twinned(tmp_path):
    directory = tmp_path / "ckpt"
    args = ("--dir", str(directory), "--epochs", "1", "--every-n-steps", "1")
    process = start_worker(*args, "--die-during-save", "rename:.tmp-")  # the 3rd commit: step 3
    output, _ = process.communicate(timeout=120)
    assert process.returncode == -9, output
    orphan = "epoch=0001-batch=0003-step=00000003"
    assert _listing(directory) == ["epoch=0001-batch=0002-step=00000002", orphan, "last.json"]
    result = run_worker(*args, "--resume", "last")
    assert f"removed {orphan} from {directory}" in result.stdout, result.stdout
    assert _listing(directory) == ["best.safetensors", "epoch=0001-step=00000008", "last.json"]  # no `-v1` twin
