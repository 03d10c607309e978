"""`callbacks-kit train --task segmentation` on a folder of images and masks, then predict, evaluate and export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from helpers.images import write_segmentation_split
from helpers.tiny import TinySegmenter
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks_kit.cli import build_parser, main
from callbacks_kit.cli.job import build_job
from callbacks_kit.cli.segmentation_job import check_task_args
from callbacks_kit.deploy import RunInfo, load_run_model
from callbacks_kit.deploy.evaluate_segmentation import evaluate_segmentation
from callbacks_kit.deploy.export import WRITERS
from callbacks_kit.errors import DataError
from callbacks_kit.finetune.segmentation_models import SegmentationLogits
from callbacks_kit.finetune.unet import UNet
from callbacks_kit.inspection.segmentation_image import palette
from callbacks_kit.losses import SegmentationLoss
from callbacks_kit.segmentation_metrics import PixelCounts, segmentation_logits, segmentation_scores

NAMES = ["background", "circle", "square", "triangle", "cross", "star", "ring"]
TRAIN = ["train", "--task", "segmentation", "--epochs", "1", "--batch-size", "8", "--image-size", "32"]
QUIET = ["--no-progress", "--scheduler", "none", "--hist-every", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run of the default U-Net on a folder of 24 px image and mask pairs (a 255 border ignored), and the folder."""
    import os

    if os.environ.get("SEGCLI_DEV"):
        return Path(os.environ["SEGCLI_DEV"]) / "run", Path(os.environ["SEGCLI_DEV"]) / "data"
    root = tmp_path_factory.mktemp("segcli")
    data = root / "data"
    write_segmentation_split(data / "train", 16, seed=0, ignore_border=True)
    write_segmentation_split(data / "val", 8, seed=1, ignore_border=True, sizes=(24, 40, 31))
    (data / "classes.txt").write_text("\n".join(NAMES) + "\n")
    argv = [*TRAIN, *QUIET, "--data", str(data), "--loss", "ce+dice", "--log-dir", str(root / "run")]
    assert main([*argv, "--overlay-images", "3", "--worst-images", "2", "--workers", "0"]) == 0
    return root / "run", data


def test_the_run_trains_logs_and_remembers_the_task(trained: tuple[Path, Path]):
    run, _ = trained
    info = json.loads((run / "run.json").read_text())
    assert info["version"] == 2 and info["task"] == "segmentation" and info["model"] == "unet"
    assert info["classes"] == NAMES and info["loss"] == "ce+dice" and info["ignore_index"] == 255
    assert (run / "checkpoints" / "best.safetensors").is_file()
    state = json.loads(next((run / "checkpoints").glob("epoch=*/state.json")).read_text())
    assert any(key.startswith("ModelCheckpoint[val/mean_iou,max") for key in state["callbacks"])  # ranked by mean IoU
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0}).Reload()
    validation = EventAccumulator(str(run / "validation"), size_guidance={"scalars": 0}).Reload()
    assert {"loss", "mean_iou", "pixel_accuracy", "iou/background", "dice/ring"} <= set(validation.Tags()["scalars"])
    images = set(events.Tags()["images"])
    assert {"segmentation/overlays", "segmentation/worst/val", "segmentation/confusion_matrix/val"} <= images
    assert "segmentation_report/val/text_summary" in events.Tags()["tensors"]


def test_predict_writes_one_index_png_per_image_at_its_size(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    run, data = trained
    images = data / "val" / "images"
    out = tmp_path / "masks"
    assert main(["predict", str(run), str(images), "--output", str(out), "--overlay", "--cpu"]) == 0
    printed = capsys.readouterr().out
    model, info = load_run_model(run)
    for path in sorted(images.iterdir()):
        written = Image.open(out / f"{path.stem}.png")
        source = Image.open(path)
        assert written.mode == "P" and written.size == source.size  # at the image's own size
        values = np.asarray(written)
        assert values.max() < len(NAMES)
        overlay = np.asarray(Image.open(out / f"{path.stem}_overlay.png"), dtype=np.float32)
        assert overlay.shape[:2] == values.shape  # each class in its palette colour over the image in grey:
        grey = np.asarray(source.convert("RGB"), dtype=np.float32).mean(axis=2, keepdims=True)
        assert np.abs(overlay - (0.4 * grey + 0.6 * palette().numpy()[values])).max() <= 0.5
        # The mask is the argmax of the logits resized back to the image: what the model says, pixel for pixel.
        with torch.inference_mode():
            logits = segmentation_logits(model(info.transform()(source.convert("RGB"))[None]))
            full = torch.nn.functional.interpolate(logits, size=source.size[::-1], mode="bilinear")
        assert (full.argmax(1)[0].numpy() == values).mean() > 0.999
        assert f"{path} -> {out / (path.stem + '.png')} ({source.size[0]}x{source.size[1]}):" in printed
    assert f"{len(list(images.iterdir()))} mask(s) and overlays written to {out}" in printed


def test_evaluate_reports_the_json_shape_and_writes_test_scalars(trained: tuple[Path, Path], tmp_path: Path):
    run, data = trained
    output = tmp_path / "figures.json"
    assert main(["evaluate", str(run), "--data", str(data / "val"), "--output", str(output), "--cpu"]) == 0
    figures = json.loads(output.read_text())
    assert set(figures) == {"loss", "mean_iou", "pixel_accuracy", "per_class"}
    assert list(figures["per_class"]) == NAMES and all(set(v) == {"iou", "dice"} for v in figures["per_class"].values())
    # The figures of the masks predict writes, at each mask's own size, its 255 border ignored.
    model, info = load_run_model(run)
    counts, losses = PixelCounts(len(NAMES)), []
    for path in sorted((data / "val" / "images").iterdir()):
        mask = torch.from_numpy(np.asarray(Image.open(data / "val" / "masks" / path.name)).astype(np.int64))[None]
        with torch.inference_mode():
            logits = segmentation_logits(model(info.transform()(Image.open(path).convert("RGB"))[None]))
            full = torch.nn.functional.interpolate(logits, size=mask.shape[-2:], mode="bilinear")
        counts.add_logits(full, mask)
        losses.append(float(SegmentationLoss("ce+dice")(full, mask)))
    matrix, ignored, _ = counts.read()
    scores = segmentation_scores(matrix, ignored)
    assert ignored > 0 and figures["loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert figures["mean_iou"] == pytest.approx(scores.mean_iou) and figures["pixel_accuracy"] == pytest.approx(
        scores.pixel_accuracy
    )
    for name, iou in zip(NAMES, scores.iou, strict=True):
        assert figures["per_class"][name]["iou"] == (None if np.isnan(iou) else pytest.approx(iou))
    test = EventAccumulator(str(run / "test"), size_guidance={"scalars": 0}).Reload()  # the test split's sub-run
    assert test.Scalars("mean_iou")[-1].value == pytest.approx(scores.mean_iou, rel=1e-5)
    assert {"loss", "pixel_accuracy"} <= set(test.Tags()["scalars"])
    validation = EventAccumulator(str(run / "validation"), size_guidance={"scalars": 0}).Reload()
    assert test.Scalars("loss")[-1].step == max(e.step for e in validation.Scalars("loss"))  # at the run's end
    events = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    assert {"test/iou/circle", "test/dice/circle"} <= set(events.Tags()["scalars"])


def test_evaluate_refuses_other_classes(trained: tuple[Path, Path], tmp_path: Path):
    run, data = trained
    (tmp_path / "images").mkdir()
    (tmp_path / "classes.txt").write_text("sky\nsea\n")
    with pytest.raises(DataError, match="names the classes sky, sea, but the run was trained on background"):
        evaluate_segmentation(run, tmp_path, device="cpu", tensorboard=False)


@pytest.mark.parametrize("fmt", ["state_dict", "torchscript"])
def test_export_gives_the_logits_tensor_checked_against_pytorch(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
):
    run, _ = trained
    output = tmp_path / f"model.{fmt}"
    assert main(["export", str(run), "--format", fmt, "--output", str(output)]) == 0
    assert "largest difference from the PyTorch model" in capsys.readouterr().out
    model, _ = load_run_model(run)
    images = torch.randn(2, 3, 40, 56)  # another size than the run's: any image size goes
    with torch.inference_mode():
        expected = model(images)
        if fmt == "state_dict":  # the package's U-Net, as a user builds it
            plain = UNet(7)
            plain.load_state_dict(torch.load(output, weights_only=True))
            got = plain.eval()(images)
        else:
            got = torch.jit.load(str(output))(images)
    assert got.shape == (2, 7, 40, 56) and torch.allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("net", ["tiny", "unet"])
def test_onnx_export_of_a_segmentation_model_takes_any_image_size(tmp_path: Path, net: str):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = SegmentationLogits(TinySegmenter(7) if net == "tiny" else UNet(7, width=8)).eval()
    info = RunInfo("tiny", NAMES, 32, 32, task="segmentation")
    diff = WRITERS["onnx"](model, info, tmp_path / "m.onnx", torch.randn(2, 3, 32, 32))
    assert diff < 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    images = torch.randn(3, 3, 45, 61)
    (got,) = session.run(None, {"images": images.numpy()})
    with torch.inference_mode():
        assert got.shape == (3, 7, 45, 61) and np.allclose(got, model(images).numpy(), atol=1e-4)


def test_a_torchvision_model_trains_and_exports_a_state_dict_torchvision_loads(tmp_path: Path):
    argv = [*TRAIN, *QUIET, "--train-samples", "8", "--val-samples", "4", "--no-inspection", "--workers", "0"]
    run = tmp_path / "run"
    assert main([*argv, "--model", "lraspp_mobilenet_v3_large", "--log-dir", str(run)]) == 0
    assert main(["export", str(run), "--format", "state_dict", "--output", str(tmp_path / "m.pt")]) == 0
    plain = torchvision.models.get_model(
        "lraspp_mobilenet_v3_large", num_classes=7, weights=None, weights_backbone=None
    )
    plain.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    model, info = load_run_model(run)
    images = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert info.model == "lraspp_mobilenet_v3_large"
        assert torch.allclose(plain.eval()(images)["out"], model(images)["out"], atol=1e-5)


def test_the_shapes_job_is_segmentation_with_background_and_its_defaults():
    args = build_parser().parse_args(
        ["train", "--task", "segmentation", "--train-samples", "8", "--val-samples", "4", "--image-size", "32"]
    )
    job = build_job(args)
    assert job.classes == NAMES and args.model == "unet" and args.loss == "ce+dice"
    assert (args.epochs, args.batch_size, args.lr) == (6, 32, 5e-3)  # the task's own defaults
    given = build_parser().parse_args(["train", "--task", "segmentation", "--batch-size", "64", "--lr", "2e-3"])
    check_task_args(given)
    assert (given.epochs, given.batch_size, given.lr) == (6, 64, 2e-3)  # a value given stays, even the other's
    images, masks = next(iter(job.val_loader))
    assert images.shape[1:] == (3, 32, 32) and masks.shape[1:] == (32, 32)
    trainer = job.trainer(args, [], progress_bar=False)
    assert isinstance(trainer.loss_fn, SegmentationLoss) and trainer.loss_fn.ignore_index == 255
    assert {"mean_iou", "pixel_accuracy", "iou/background", "dice/ring"} <= set(trainer.metrics)
    assert isinstance(job.model, UNet) and job.model.classifier is not None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--loss", "dice"], "--loss set up segmentation: add --task segmentation"),
        (["train", "--task", "segmentation", "--augment", "trivialaugment"], "transforms the image only"),
        (["train", "--task", "segmentation", "--model", "resnet18"], "--model resnet18 is not a segmentation model"),
        (["train", "--task", "segmentation", "--mixup", "0.2"], "--mixup only apply to classification"),
        (["train", "--task", "segmentation", "--ignore-index", "300"], "--ignore-index must be a mask value"),
        (["train", "--task", "segmentation", "--worst-images", "-1"], "--worst-images must be 0 \\(off\\)"),
    ],
)
def test_flags_that_do_not_fit_the_task_are_refused_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    assert main([*argv, "--log-dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and re.search(message, error)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_predict_and_evaluate_ask_for_what_a_segmentation_run_needs(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
):
    run, data = trained
    assert main(["predict", str(run), str(data / "val" / "images")]) == 2
    assert "pass --output DIR" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--data", str(data / "val"), "--output", "figures.csv"]) == 2
    assert "give a .json file name" in capsys.readouterr().err
