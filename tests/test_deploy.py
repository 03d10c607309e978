"""Using a trained run: run.json, `predict`, `evaluate` and `export`, on a tiny shapes run trained once."""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import torchvision
from helpers.images import write_image_folder
from PIL import Image
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks_kit.cli import main
from callbacks_kit.deploy import evaluate_run, export_run, load_run_model, predict, read_run_info
from callbacks_kit.deploy.predict import Prediction, PredictionResult, write_predictions
from callbacks_kit.deploy.run_info import RUN_INFO
from callbacks_kit.errors import CheckpointError, DataError, DeployError

TRAIN = ["--epochs", "1", "--train-samples", "48", "--val-samples", "24", "--batch-size", "16", "--image-size", "32"]
QUIET = ["--no-progress", "--no-inspection", "--scheduler", "none"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A resnet18 run on the shapes at 32 px, and a folder of shapes PNGs (class folders) to use it on."""
    root = tmp_path_factory.mktemp("deploy")
    assert main(["train", *TRAIN, *QUIET, "--log-dir", str(root / "run")]) == 0
    write_image_folder(root / "pngs", per_class=3, split=False)
    return root / "run", root / "pngs"


def test_run_json_says_how_to_use_the_model(trained: tuple[Path, Path]):
    run, _ = trained
    data = json.loads((run / RUN_INFO).read_text())
    assert data["format"] == "callbacks_kit.run" and data["version"] == 1
    assert data["model"] == "resnet18" and data["head"] == "linear"
    assert data["num_classes"] == 6
    assert data["classes"] == ["circle", "square", "triangle", "cross", "star", "ring"]
    assert data["image_size"] == 32 and data["resize"] == 32
    assert data["mean"] == pytest.approx([0.485, 0.456, 0.406]) and data["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert data["package_version"]
    assert (run / "checkpoints" / "best.safetensors").is_file()  # the checkpoint folder stays as it was
    model, info = load_run_model(run)
    assert info.classes == data["classes"] and not model.training


def test_predict_accuracy_equals_evaluate_and_cli_matches_python(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    run, pngs = trained
    result = predict(run, [pngs], top_k=3, device="cpu")
    assert len(result.predictions) == len(list(pngs.rglob("*.png"))) and not result.skipped
    correct = [Path(p.path).parent.name == p.label for p in result.predictions]
    report = evaluate_run(run, pngs, device="cpu", tensorboard=False)
    assert report.samples == len(result.predictions)
    assert report.accuracy == pytest.approx(sum(correct) / len(correct), abs=1e-12)
    # The per-class report and confusion matrix agree with scikit-learn on predict's labels.
    classes = read_run_info(run).classes
    truth = [classes.index(Path(p.path).parent.name) for p in result.predictions]
    guess = [classes.index(p.label) for p in result.predictions]
    assert report.confusion.tolist() == confusion_matrix(truth, guess, labels=range(6)).tolist()
    precision, recall, f1, support = precision_recall_fscore_support(truth, guess, labels=range(6), zero_division=0)
    assert report.precision == pytest.approx(precision.tolist()) and report.recall == pytest.approx(recall.tolist())
    assert report.f1 == pytest.approx(f1.tolist()) and report.support == support.tolist()
    first = result.predictions[0]
    assert first.probabilities == sorted(first.probabilities, reverse=True) and len(first.classes) == 3
    # The command prints the same top classes, and writes CSV and JSON.
    assert main(["predict", str(run), str(pngs), "--cpu", "--top-k", "3", "--output", str(tmp_path / "p.csv")]) == 0
    out = capsys.readouterr().out
    shown = ", ".join(f"{c} {v:.3f}" for c, v in zip(first.classes, first.probabilities, strict=True))
    assert f"{first.path}: {shown}" in out and f"{len(correct)} image(s) predicted on cpu, 0 skipped" in out
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class_1"] for r in rows] == [p.label for p in result.predictions]
    assert float(rows[0]["probability_1"]) == pytest.approx(first.probabilities[0])
    assert (
        main(["predict", str(run), str(pngs / "circle" / "*.png"), "--cpu", "--output", str(tmp_path / "p.json")]) == 0
    )
    written = json.loads((tmp_path / "p.json").read_text())
    circles = [p for p in result.predictions if Path(p.path).parent.name == "circle"]
    assert [r["top"][0]["class"] for r in written["predictions"]] == [p.label for p in circles]


def test_predict_skips_unreadable_images_and_converts_every_mode(trained: tuple[Path, Path], tmp_path: Path):
    run, pngs = trained
    source = sorted((pngs / "star").glob("*.png"))[0]
    rgb = np.asarray(Image.open(source).convert("RGB"))
    grey = np.asarray(Image.open(source).convert("L"))
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(rgb).save(folder / "a_rgb.png")
    Image.fromarray(np.dstack([rgb, np.full(grey.shape, 255, np.uint8)])).save(folder / "b_rgba.png")
    Image.fromarray(grey).save(folder / "c_grey.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "d_grey16.png")  # 16-bit: same picture
    (folder / "e_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        result = predict(run, [folder], top_k=6, device="cpu")
    assert [Path(p).name for p, _ in result.skipped] == ["e_broken.png"]
    by_name = {Path(p.path).name: p for p in result.predictions}
    assert sorted(by_name) == ["a_rgb.png", "b_rgba.png", "c_grey.png", "d_grey16.png"]

    def probs(name: str) -> list[float]:
        p = by_name[name]
        return [p.probabilities[p.classes.index(c)] for c in sorted(p.classes)]

    assert probs("b_rgba.png") == pytest.approx(probs("a_rgb.png"), abs=1e-6)  # opaque alpha dropped
    assert probs("d_grey16.png") == pytest.approx(probs("c_grey.png"), abs=1e-6)  # 16-bit scaled, not white


def test_predictions_to_an_unknown_kind_of_file_are_a_deploy_error(tmp_path: Path):
    result = PredictionResult([Prediction("a.png", ["ring"], [1.0])])
    with pytest.raises(DeployError, match=r"--output .*out\.txt: give a \.csv or \.json file name"):
        write_predictions(result, tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()


def test_evaluate_writes_test_scalars_and_reports_missing_classes(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    run, pngs = trained
    subset = tmp_path / "test"
    for name in ("circle", "ring"):
        (subset / name).mkdir(parents=True)
        for png in sorted((pngs / name).glob("*.png")):
            (subset / name / png.name).write_bytes(png.read_bytes())
    before = set(run.rglob("events.out.tfevents.*"))
    assert main(["evaluate", str(run), "--data", str(subset), "--cpu"]) == 0
    out = capsys.readouterr().out
    assert "classes without test images (not measured): square, triangle, cross, star" in out
    assert "test/accuracy" in out and "confusion matrix" in out
    new = {f.parent.relative_to(run).as_posix(): f for f in set(run.rglob("events.out.tfevents.*")) - before}
    assert sorted(new) == [".", "test"]  # new event files: the training's stay as they were

    def read(path: Path) -> EventAccumulator:
        return EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0, "tensors": 0}).Reload()

    events, test = read(new["."]), read(new["test"])
    report = evaluate_run(run, subset, device="cpu", tensorboard=False)
    # In the test split's sub-run, under the tags of the training and validation curves, at the run's last step.
    (end,) = {event.step for event in read(run / "train").Scalars("loss")}  # one epoch of 48 / 16: step 3
    assert [(e.step, e.value) for e in test.Scalars("accuracy")] == [(end, pytest.approx(report.accuracy))]
    assert [(e.step, e.value) for e in test.Scalars("loss")] == [(end, pytest.approx(report.loss, rel=1e-6))]
    assert events.Scalars("test/f1/circle")[0].step == events.Images("confusion_matrix/test")[0].step == end == 3
    counts = [len(list((subset / name).glob("*.png"))) for name in ("circle", "ring")]
    assert report.samples == sum(counts) and report.support == [counts[0], 0, 0, 0, 0, counts[1]]


def test_evaluate_refuses_classes_the_run_does_not_know(trained: tuple[Path, Path], tmp_path: Path):
    run, pngs = trained
    (tmp_path / "test" / "hexagon").mkdir(parents=True)
    (tmp_path / "test" / "circle").mkdir()
    for png in sorted((pngs / "circle").glob("*.png")):
        (tmp_path / "test" / "circle" / png.name).write_bytes(png.read_bytes())
        (tmp_path / "test" / "hexagon" / png.name).write_bytes(png.read_bytes())
    events = set(run.glob("events.out.tfevents.*"))
    with pytest.raises(DataError, match="class folders the run was not trained on: hexagon"):
        evaluate_run(run, tmp_path / "test", device="cpu")
    assert set(run.glob("events.out.tfevents.*")) == events


def test_not_a_run_and_a_newer_run_are_refused(trained: tuple[Path, Path], tmp_path: Path):
    with pytest.raises(CheckpointError, match="is not a callbacks-kit run: it holds no run.json"):
        predict(tmp_path, [trained[1]])
    newer = tmp_path / "newer"
    newer.mkdir()
    data = json.loads((trained[0] / RUN_INFO).read_text())
    (newer / RUN_INFO).write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(CheckpointError, match="newer than this callbacks-kit reads.*upgrade callbacks-kit"):
        read_run_info(newer)
    assert main(["evaluate", str(tmp_path), "--data", str(trained[1])]) == 2


TORCH = tuple(int(part) for part in torch.__version__.split(".")[:2])


@contextlib.contextmanager
def deprecated(message: str) -> Iterator[None]:
    """TorchScript's FutureWarning where torch has deprecated it (2.14 on), reaching the user; nothing before."""
    if TORCH < (2, 14):
        yield
        return
    with pytest.warns(FutureWarning, match=message):
        yield


def test_export_all_formats_reproduce_pytorch(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    run, _ = trained
    model, info = load_run_model(run)
    batch = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))  # another batch size than the check's
    with torch.inference_mode():
        expected = model(batch)
    formats = ["state_dict", "torchscript", "pt2", "onnx"]
    for fmt in list(formats):
        out = tmp_path / f"model.{fmt}"
        if fmt == "torchscript":  # deprecated in torch 2.14: torch's warnings reach the user, and a note says why
            with deprecated(r"torch\.jit\.trace. is deprecated"):
                assert main(["export", str(run), "--format", fmt, "--output", str(out)]) == 0
            assert "note: TorchScript is deprecated since torch 2.14" in capsys.readouterr().out
            continue
        code = main(["export", str(run), "--format", fmt, "--output", str(out)])
        if fmt == "pt2" and TORCH < (2, 5) and code != 0:  # torch.export guards a ResNet's batch size there
            assert "torch 2.5 or later exports it, or choose --format onnx" in capsys.readouterr().err
            formats.remove(fmt)
            continue
        assert code == 0
        printed = capsys.readouterr().out
        assert f"{fmt} written to {out}; checked on a sample batch: largest difference" in printed
        assert "weights: best (the trained weights with the best val/accuracy)" in printed
    plain = torchvision.models.get_model("resnet18", num_classes=6)
    plain.load_state_dict(torch.load(tmp_path / "model.state_dict", weights_only=True))
    with deprecated(r"torch\.jit\.load. is deprecated"):
        scripted = torch.jit.load(str(tmp_path / "model.torchscript"))
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        outputs = {"state_dict": plain.eval()(batch), "torchscript": scripted(batch)}
        if "pt2" in formats:
            program = torch.export.load(str(tmp_path / "model.pt2"))  # an ExportedProgram, any batch size
            assert isinstance(program, torch.export.ExportedProgram)
            outputs["pt2"] = program.module()(batch)
            assert program.module()(batch[:1]).shape == (1, 6)
    outputs["onnx"] = torch.from_numpy(session.run(None, {"images": batch.numpy()})[0])
    for fmt, got in outputs.items():
        assert (got - expected).abs().max() <= 1e-4, fmt


def test_export_refuses_a_missing_package_and_an_existing_file(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    run, _ = trained
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
        with pytest.raises(DeployError, match=r'needs the onnxruntime package.*pip install "callbacks-kit\[export\]"'):
            export_run(run, "onnx", tmp_path / "m.onnx")
        assert main(["export", str(run), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 2
        assert 'pip install "callbacks-kit[export]"' in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
    kept = tmp_path / "kept.pth"
    kept.write_bytes(b"precious")
    with pytest.raises(DeployError, match="exists; pass another --output, or --overwrite"):
        export_run(run, "state_dict", kept)
    assert kept.read_bytes() == b"precious"
    assert export_run(run, "state_dict", kept, overwrite=True).max_abs_diff == 0
    assert list(tmp_path.glob(".tmp-*")) == []


def test_a_run_refused_for_bad_input_keeps_the_run_json_it_found(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
):
    run, _ = trained
    before = (run / RUN_INFO).read_text()
    # ViT-B/16 takes 224 px only: the first batch fails in the sanity check, before fit starts (a run folder
    # is continued with --resume alone; without it the folder is refused before anything is read).
    bad = [*TRAIN, *QUIET, "--model", "vit_b_16", "--log-dir", str(run), "--resume", "last"]
    assert main(["train", *bad]) == 2
    assert "the first batch fails in the model" in capsys.readouterr().err
    assert (run / RUN_INFO).read_text() == before
    assert load_run_model(run)[1].model == "resnet18"


def test_checkpoint_choice_best_last_and_path(trained: tuple[Path, Path]):
    run, pngs = trained
    image = [sorted(pngs.rglob("*.png"))[0]]
    best = predict(run, image, device="cpu").predictions[0]
    last = predict(run, image, checkpoint="last", device="cpu").predictions[0]  # one epoch: the same weights
    folder = next(p for p in (run / "checkpoints").iterdir() if p.is_dir())
    by_path = predict(run, image, checkpoint=str(folder), device="cpu").predictions[0]
    assert best.probabilities == last.probabilities == by_path.probabilities
    with pytest.raises(CheckpointError, match="--checkpoint nowhere: no such weights file or checkpoint folder"):
        predict(run, image, checkpoint="nowhere")
    with pytest.raises(DataError, match="no such file or folder"):
        predict(run, [run / "missing.png"])
