"""predict, evaluate and export on damaged runs and bad places to write: one line each, before any work.

The run is made by hand (a run.json and untrained weights), so no test here trains.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
from helpers.images import write_image_folder
from sklearn.metrics import precision_recall_fscore_support

from callbacks_kit.checkpoint.format import BEST_WEIGHTS
from callbacks_kit.cli import main
from callbacks_kit.deploy import evaluate_run, load_run_model, predict
from callbacks_kit.deploy.run_info import RUN_INFO, RunInfo, write_run_info
from callbacks_kit.errors import DeployError
from callbacks_kit.finetune import build_classifier

CLASSES = ["circle", "square", "triangle", "cross", "star", "ring"]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run folder written as train writes one (resnet18, 6 classes, 32 px), and a folder of shapes PNGs."""
    root = tmp_path_factory.mktemp("made")
    run = root / "run"
    write_run_info(run, RunInfo("resnet18", CLASSES, 32, 32))
    model = build_classifier("resnet18", len(CLASSES))
    (run / "checkpoints").mkdir()
    safetensors.torch.save_file(model.state_dict(), str(run / "checkpoints" / BEST_WEIGHTS))
    write_image_folder(root / "pngs", per_class=2, split=False)
    return run, root / "pngs"


def _copy(run: Path, tmp_path: Path, **changes: object) -> Path:
    """A copy of `run` whose run.json has `changes` (the value None deletes the field)."""
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    data = json.loads((copy / RUN_INFO).read_text())
    data.update(changes)
    (copy / RUN_INFO).write_text(json.dumps(data))
    return copy


def _one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert captured.out == ""  # refused before any image was predicted
    return captured.err


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"classes": "abcdef", "num_classes": 6},
            "classes must be a list of distinct class names (strings), one per "
            "output of the model, got the string 'abcdef'",
        ),  # fmt: skip
        ({"image_size": "32"}, "image_size must be a whole number of pixels, at least 1, got the string '32'"),
        ({"image_size": -5}, "image_size must be a whole number of pixels, at least 1, got -5"),
        ({"mean": [0.5, 0.5], "head": "conv"}, "head must be one of 'linear', 'mlp', got the string 'conv'; mean"),
        ({"classes": ["a", "a", "b", "c", "d", "e"]}, "classes must be a list of distinct class names"),
        ({"best_weights": "averaged"}, "best_weights must be 'trained' or 'ema', got the string 'averaged'"),
    ],
)
def test_a_run_json_that_breaks_the_schema_is_one_message(made, tmp_path, capsys, changes, message):
    run, pngs = made
    err = _one_line(["predict", str(_copy(run, tmp_path, **changes)), str(pngs), "--cpu"], capsys)
    assert message in err and "does not describe a run callbacks-kit can use" in err


def test_a_run_json_that_is_a_list_or_lists_another_class_count(made, tmp_path, capsys):
    run, pngs = made
    listed = tmp_path / "listed"
    shutil.copytree(run, listed)
    (listed / RUN_INFO).write_text(json.dumps([json.loads((run / RUN_INFO).read_text())]))
    err = _one_line(["predict", str(listed), str(pngs), "--cpu"], capsys)
    assert "it holds a list" in err and "not a JSON object" in err
    five = _copy(run, tmp_path, classes=CLASSES[:5], num_classes=5)
    err = _one_line(["export", str(five), "--format", "state_dict"], capsys)
    assert "run.json lists 5 classes, but the weights" in err and "have 6 outputs (fc.weight: [6, 512])" in err


def test_write_run_info_refuses_what_read_run_info_would(tmp_path):
    with pytest.raises(DeployError, match="classes must be a list of distinct class names"):
        write_run_info(tmp_path, RunInfo("resnet18", "abcdef", 32, 32))  # type: ignore[arg-type]
    assert not (tmp_path / RUN_INFO).exists()


def test_a_missing_run_folder_is_not_called_an_older_run(made, tmp_path, capsys):
    err = _one_line(["predict", str(tmp_path / "no_such_run"), str(made[1]), "--cpu"], capsys)
    assert f"{tmp_path / 'no_such_run'}: no such run folder" in err and "an older callbacks-kit" not in err


def test_damaged_or_foreign_weights_say_what_they_are(made, tmp_path, capsys):
    run, pngs = made
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    best = broken / "checkpoints" / BEST_WEIGHTS
    best.write_bytes(best.read_bytes()[:1000])  # truncated
    err = _one_line(["predict", str(broken), str(pngs), "--cpu"], capsys)
    assert "is damaged or truncated" in err and "--checkpoint last" in err and "does not fit" not in err
    text = tmp_path / "notes.pth"
    text.write_text("123\n")
    err = _one_line(["predict", str(run), str(pngs), "--cpu", "--checkpoint", str(text)], capsys)
    assert f"{text} is not a weights file: neither safetensors nor a PyTorch file" in err
    assert "Unsupported operand" not in err
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "module.pth")  # a module, not its state_dict
    err = _one_line(["predict", str(run), str(pngs), "--cpu", "--checkpoint", str(tmp_path / "module.pth")], capsys)
    assert "holds more than tensors" in err and "model.state_dict()" in err


def _read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write into: a read-only one, or sysfs for root (which ignores modes)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    if not Path("/sys").is_dir():
        pytest.skip("no read-only place for root on this system")
    return Path("/sys")


def test_predict_output_is_checked_before_any_image_is_read(made, tmp_path, capsys):
    run, pngs = made
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "file").write_text("x")
    for output, message in [
        (tmp_path / "folder.csv", "is a folder; give the name of a file to write"),
        (tmp_path / "file" / "p.csv", f"{tmp_path / 'file'} is a file, not a folder"),
        (_read_only_folder(tmp_path) / "p.csv", "cannot write into"),
        (tmp_path / "p.txt", "give a .csv or .json file name"),
    ]:
        err = _one_line(["predict", str(run), str(pngs), "--cpu", "--output", str(output)], capsys)
        assert f"--output {output}" in err and message in err
    # A folder that does not exist yet is made.
    assert main(["predict", str(run), str(pngs), "--cpu", "--output", str(tmp_path / "new" / "deeper" / "p.json")]) == 0
    assert len(json.loads((tmp_path / "new" / "deeper" / "p.json").read_text())["predictions"]) == 24


def test_export_output_and_tolerance_are_checked_before_the_model_is_loaded(made, tmp_path, capsys, monkeypatch):
    run, _ = made
    from callbacks_kit.deploy import export

    def not_now(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(export, "load_run_model", not_now)
    (tmp_path / "out").mkdir()
    (tmp_path / "file").write_text("x")
    cases = [
        (
            ["--output", str(tmp_path / "out"), "--overwrite"],
            f"is a folder; give the name of a file to write, e.g. {tmp_path / 'out' / 'model.pth'}",
        ),  # fmt: skip
        (["--output", str(tmp_path / "file" / "m.pth")], f"{tmp_path / 'file'} is a file, not a folder"),
        (["--output", str(_read_only_folder(tmp_path) / "m.pth")], "cannot write into"),
        (["--tolerance", "nan"], "--tolerance must be a finite number of at least 0"),
        (["--tolerance", "-1"], "--tolerance must be a finite number of at least 0"),
    ]
    for extra, message in cases:
        err = _one_line(["export", str(run), "--format", "state_dict", *extra], capsys)
        assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out"] and not list((tmp_path / "out").iterdir())


def test_evaluate_macro_average_leaves_out_classes_without_samples_as_sklearn_labels(made, tmp_path, capsys):
    run, pngs = made
    subset = tmp_path / "test"
    for name in ("circle", "ring"):
        shutil.copytree(pngs / name, subset / name)
    report = evaluate_run(run, subset, device="cpu", tensorboard=False)
    model, info = load_run_model(run)
    result = predict(run, [subset], top_k=1, device="cpu")
    truth = [info.classes.index(Path(p.path).parent.name) for p in result.predictions]
    guess = [info.classes.index(p.label) for p in result.predictions]
    present = [info.classes.index("circle"), info.classes.index("ring")]
    expected = precision_recall_fscore_support(truth, guess, labels=present, average="macro", zero_division=0)
    assert report.present == present
    got = (report.macro("precision"), report.macro("recall"), report.macro("f1"))
    assert got == pytest.approx(expected[:3], abs=1e-12)
    table = report.table()
    assert "covers the 2 of 6 classes with test images" in table and "labels=" in table
    macro = next(line for line in table.splitlines() if line.startswith("macro avg"))
    assert f"{expected[2]:.4f}" in macro
    assert main(["evaluate", str(run), "--data", str(subset), "--cpu", "--no-tensorboard"]) == 0
    assert "covers the 2 of 6 classes" in capsys.readouterr().out
