"""`callbacks-kit inspect RUN` on a run of the main job: every dashboard holds what the main job writes."""

import json

import pytest

from callbacks_kit import cli
from callbacks_kit.inspection.event_report import format_report, inspect_run


@pytest.fixture(scope="module")
def main_job_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("main_job") / "run"
    argv = [
        "train",
        "--epochs",
        "1",
        "--train-samples",
        "32",
        "--val-samples",
        "16",
        "--image-size",
        "32",
        "--batch-size",
        "16",
        "--log-every",
        "1",
        "--probe-images",
        "4",
        "--no-progress",
        "--log-dir",
        str(run_dir),
    ]
    assert cli.main(argv) == 0
    return run_dir


@pytest.mark.slow  # trains the main job's ResNet-18 (small data, one epoch)
def test_main_job_fills_every_plugin(main_job_run):
    runs = inspect_run(main_job_run)["runs"]
    assert set(runs) == {".", "train", "validation"}
    run = runs["."]
    assert {"loss", "loss/step"} <= set(runs["train"]["scalars"])
    assert set(runs["validation"]["scalars"]) == {"loss", "accuracy"}
    assert {"val_best/accuracy", "optimisation/grad_norm", "lr/fc", "lr/layer4", "perf/samples_per_sec"} <= set(
        run["scalars"]
    )
    assert {"weights/conv1.weight", "grads/fc.weight", "weights/layer4.1.bn2.bias"} <= set(run["histograms"])
    images = run["images"]
    # At 32 px ResNet-18's stages give 16, 8, 4, 2 and 1 pixel maps: the views stop at layer2 (4x4).
    assert {"kernels/conv1", "gradcam/layer2", "confusion_matrix/val"} <= set(images)
    assert not any("layer3" in tag or "layer4" in tag for tag in images)
    assert {f"feature_maps/image0/{k}_{name}" for k, name in enumerate(["input", "conv1", "layer1", "layer2"])} <= set(
        images
    )
    assert images["kernels/conv1"]["width"] == 8 * 28 + 9 * 2  # 64 colour 7x7 kernels enlarged x4, 8x8 grid
    assert images["gradcam/layer2"]["width"] == 2 * 128 + 3 * 2  # 4 probe images, 2 per row
    assert run["graphs"]["nodes"] > 50
    assert "model/summary/text_summary" in run["text"]
    assert run["hparams"]["hparams"]["model"] == "resnet18" and run["hparams"]["status"] == "STATUS_SUCCESS"
    best = run["hparams"]["metrics"]["best/val/accuracy"]
    assert (
        best
        == run["scalars"]["val_best/accuracy"]["last_value"]
        == runs["validation"]["scalars"]["accuracy"]["last_value"]
    )
    assert "losses" in run["custom_scalars"]


@pytest.mark.slow  # trains the main job's ResNet-18 (small data, one epoch)
def test_main_job_hparams_are_what_defines_the_run(main_job_run):
    hparams = inspect_run(main_job_run)["runs"]["."]["hparams"]
    values = hparams["hparams"]
    defining = {"model": "resnet18", "weights": "none", "data": "shapes", "image_size": 32, "lr": 2e-3,
                "batch_size": 16, "epochs": 1, "scheduler": "onecycle", "augment": "none", "ema": 0,
                "mixup": 0, "cutmix": 0, "label_smoothing": 0, "freeze_backbone": False}  # fmt: skip
    assert {name: values[name] for name in defining} == defining
    assert values["freeze_backbone"] is False  # a boolean in the dashboard, not 0.0
    given = {"train_samples": 32, "val_samples": 16, "log_every": 1, "probe_images": 4}  # the flags set above
    assert {name: values[name] for name in given} == given
    assert "allow_partial_weights" not in values and "batch_grid_every" not in values and "log_dir" not in values
    assert len(values) < 30  # what defines the run, not every flag
    assert set(hparams["shown"]) == {"model", "weights", "lr", "batch_size", "epochs"}
    assert list(hparams["metrics"]) == ["best/val/accuracy", "best/val/loss"]


@pytest.mark.slow  # trains the main job's ResNet-18 (small data, one epoch)
def test_text_report_and_cli(main_job_run, capsys):
    report = format_report(inspect_run(main_job_run))
    for plugin in ("scalars", "histograms", "images", "text", "graphs", "hparams", "custom_scalars"):
        assert f"  {plugin}:" in report
    assert "kernels/conv1: 2 steps [0, 2], 242x242" in report
    assert "[validation]" in report and "[train]" in report
    assert cli.main(["inspect", str(main_job_run)]) == 0
    assert "gradcam/layer2" in capsys.readouterr().out
    assert cli.main(["inspect", str(main_job_run), "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert parsed["runs"]["."]["images"]["gradcam/layer2"]["height"] > 128


def test_missing_run_is_an_error(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path)]) == 2
    assert "no TensorBoard event file" in capsys.readouterr().err


@pytest.mark.slow  # trains the main job's ResNet-18 (small data, one epoch)
def test_bad_layer_name_is_a_clean_cli_error(tmp_path, capsys):
    argv = [
        "train",
        "--epochs",
        "1",
        "--train-samples",
        "16",
        "--val-samples",
        "8",
        "--image-size",
        "32",
        "--no-progress",
        "--gradcam-layer",
        "layer5",
        "--log-dir",
        str(tmp_path / "bad"),
    ]
    assert cli.main(argv) == 2
    assert "closest: layer4" in capsys.readouterr().err


def test_event_files_tensorboard_cannot_read_are_named_and_the_status_says_so(tmp_path, capsys):
    from torch.utils.tensorboard import SummaryWriter

    garbage = tmp_path / "events.out.tfevents.1.garbage"
    garbage.write_bytes(bytes(range(256)) * 8)
    assert cli.main(["inspect", str(tmp_path)]) == 2  # it was: an empty report and exit 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert f"1 event file(s) hold no TensorBoard record (empty, damaged, or not written by TensorBoard): {garbage}" in (
        captured.err
    )
    with SummaryWriter(str(tmp_path)) as writer:  # a good file beside it: reported, the bad one still named
        writer.add_scalar("val/loss", 0.5, 3)
    assert cli.main(["inspect", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "val/loss: 1 steps (3..3), last 0.5" in captured.out and f"{garbage}  (unreadable: left out)" in captured.out
    assert str(garbage) in captured.err and "nothing to report" not in captured.err
    assert inspect_run(tmp_path)["unreadable"] == [str(garbage)]
