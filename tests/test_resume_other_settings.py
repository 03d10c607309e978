"""Resuming the main job with other settings says what to run, and --init-from runs it."""

from __future__ import annotations

import safetensors.torch
import torch

from callbacks_kit.cli import main

TINY = ["--train-samples", "32", "--val-samples", "16", "--batch-size", "16", "--image-size", "32", "--no-progress",
        "--no-inspection", "--model", "resnet18"]  # fmt: skip


def test_more_epochs_or_another_batch_size_on_resume_names_commands_a_cli_user_can_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--log-dir", str(run)]) == 0
    capsys.readouterr()
    checkpoints = run / "checkpoints"
    for changed in (["--epochs", "2"], ["--epochs", "1", "--batch-size", "8"]):
        assert main(["train", *TINY, *changed, "--log-dir", str(run), "--resume", "last"]) == 2
        err = capsys.readouterr().err
        assert f"cannot resume {checkpoints} with these settings" in err and "--scheduler onecycle" in err
        assert "--epochs, --batch-size, --grad-accum and --train-samples the run was started with" in err
        assert f"--init-from {checkpoints}" in err and "(a factory" not in err and err.count("\n") == 1
    # The command it names: a new run from the checkpoint's weights, with the new settings.
    new = tmp_path / "new"
    assert main(["train", *TINY, "--epochs", "2", "--log-dir", str(new), "--init-from", str(checkpoints)]) == 0
    out = capsys.readouterr().out
    assert "initialised from " in out and "model.safetensors: loaded 122 tensors" in out


def test_init_from_loads_the_checkpoint_weights_exactly(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--log-dir", str(run)]) == 0
    folder = next(p for p in (run / "checkpoints").iterdir() if p.is_dir())
    saved = safetensors.torch.load_file(str(folder / "model.safetensors"))
    seen = {}
    from callbacks_kit.cli import job as job_module

    real = job_module.Trainer

    def spy(model, *args, **kwargs):
        seen.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(job_module, "Trainer", spy)
    args = ["train", *TINY, "--epochs", "1", "--log-dir", str(tmp_path / "b"), "--init-from", str(folder)]
    assert main(args) == 0
    assert all(torch.equal(seen[k], v) for k, v in saved.items())
    assert main(["train", *TINY, "--init-from", str(folder), "--resume", str(folder)]) == 2
    assert "pass only one of them" in capsys.readouterr().err
