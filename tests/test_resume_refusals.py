"""A run folder is continued only with --resume, and only as it was: other classes, input size or freezing refused.

One tiny shapes run is trained once; every refusal below must leave it as it was (the same
bytes of best.safetensors and run.json, the same event files), and the last test resumes it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers.images import write_image_folder

from callbacks_kit.checkpoint.format import STATE_JSON
from callbacks_kit.cli import build_parser, main
from callbacks_kit.deploy.run_info import RunInfo, WriteRunInfo
from callbacks_kit.errors import CheckpointError, CLIError

# A small model: the checks do not depend on it, and its checkpoints are quick to write.
TINY = ["--train-samples", "32", "--val-samples", "16", "--batch-size", "16", "--image-size", "32", "--no-progress",
        "--no-inspection", "--scheduler", "none", "--model", "mobilenet_v3_small"]  # fmt: skip
DATA = ["--batch-size", "8", "--image-size", "32", "--workers", "0", "--no-progress", "--no-inspection",
        "--scheduler", "none", "--model", "mobilenet_v3_small"]  # fmt: skip
SHAPES = ["circle", "square", "triangle", "cross", "star", "ring"]  # ShapesDataset's order


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file of the run folder (checkpoint folders included) by relative path."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-epoch run on the built-in shapes at 32 px, and an ImageFolder of the same six class names."""
    root = tmp_path_factory.mktemp("resume")
    assert main(["train", *TINY, "--epochs", "1", "--log-dir", str(root / "run")]) == 0
    write_image_folder(root / "data", per_class=2)
    return root / "run", root / "data"


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], run: Path) -> str:
    before = _snapshot(run)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert _snapshot(run) == before  # nothing replaced, nothing added
    return err


def test_a_new_run_in_a_finished_run_folder_is_refused_before_anything_is_replaced(trained, capsys):
    run, _ = trained
    err = _refused(["train", *TINY, "--epochs", "1", "--log-dir", str(run)], capsys, run)
    assert f"--log-dir {run} already holds a run (checkpoints in {run / 'checkpoints'})" in err
    assert "--resume last" in err and "a new --log-dir" in err and f"--init-from {run / 'checkpoints'}" in err
    # Its checkpoint folder given on its own is refused too, naming a new --checkpoint-dir.
    other = run.parent / "elsewhere"
    argv = ["train", *TINY, "--log-dir", str(other), "--checkpoint-dir", str(run / "checkpoints")]
    err = _refused(argv, capsys, run)
    assert f"--checkpoint-dir {run / 'checkpoints'} already holds a run" in err and "a new --checkpoint-dir" in err
    assert not other.exists()


def test_a_folder_an_attempt_left_without_checkpoints_is_used_with_a_warning(tmp_path):
    from callbacks_kit.cli.resume_checks import check_new_run

    (tmp_path / "events.out.tfevents.1.host").write_bytes(b"")  # a run refused at fit start, say
    args = build_parser().parse_args(["train", "--log-dir", str(tmp_path)])
    with pytest.warns(UserWarning, match=r"holds what an earlier attempt left \(1 TensorBoard event file\(s\)\)"):
        check_new_run(args)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "best.safetensors").write_bytes(b"")
    (tmp_path / "run.json").write_text(json.dumps({"checkpoint_dir": str(tmp_path / "elsewhere")}))
    with pytest.raises(CLIError, match=f"already holds a run \\(checkpoints in {tmp_path / 'elsewhere'}\\)"):
        check_new_run(args)  # the checkpoints its run.json names


def test_resume_on_the_same_names_in_another_order_names_both_lists_and_init_from(trained, capsys):
    run, data = trained
    err = _refused(["train", *DATA, "--data", str(data), "--log-dir", str(run), "--resume", "last"], capsys, run)
    assert f"the checkpoint was trained on the classes {SHAPES}" in err
    assert "the same class names in another order" in err and str(sorted(SHAPES)) in err
    assert f"--init-from {run / 'checkpoints'} with a new --log-dir" in err


def test_resume_on_other_classes_is_refused(trained, capsys, tmp_path):
    run, data = trained
    other = tmp_path / "other"
    shutil.copytree(data, other)
    for part in ("train", "val"):
        for i, folder in enumerate(sorted((other / part).iterdir())):
            folder.rename(folder.with_name(f"c{i}"))
    err = _refused(["train", *DATA, "--data", str(other), "--log-dir", str(run), "--resume", "last"], capsys, run)
    assert "this run's data has other classes: ['c0', 'c1', 'c2', 'c3', 'c4', 'c5']" in err


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        (["--freeze-backbone"], "was trained unfrozen, and these flags would freeze the backbone"),
        (["--image-size", "48"], "this run would train at 48 px (--image-size), and the checkpoint"),
    ],
)
def test_resume_with_another_frozen_set_or_input_size_names_the_flag(trained, capsys, changed, message):
    run, _ = trained
    argv = ["train", *TINY, "--epochs", "2", *changed, "--log-dir", str(run), "--resume", "last"]
    err = _refused(argv, capsys, run)
    assert message in err and "--init-from" in err


def test_a_checkpoint_older_than_its_run_description_is_compared_with_run_json(trained, capsys, tmp_path):
    run, data = trained
    old = tmp_path / "old"
    shutil.copytree(run, old)
    for state in old.glob(f"checkpoints/*/{STATE_JSON}"):  # as saved before WriteRunInfo kept a state
        doc = json.loads(state.read_text())
        del doc["callbacks"][WriteRunInfo.__qualname__]
        state.write_text(json.dumps(doc))
    err = _refused(["train", *DATA, "--data", str(data), "--log-dir", str(old), "--resume", "last"], capsys, old)
    assert "the same class names in another order" in err


def test_write_run_info_refuses_a_checkpoint_of_other_classes_in_a_script():
    callback = WriteRunInfo("unused", RunInfo("mobilenet_v3_small", sorted(SHAPES), 32, 32))
    saved = WriteRunInfo("unused", RunInfo("mobilenet_v3_small", SHAPES, 32, 32)).state_dict()
    with pytest.raises(CheckpointError, match=r"same class names in another order.*load_weights"):
        callback.load_state_dict(saved)
    callback.load_state_dict({**saved, "classes": sorted(SHAPES)})  # the same classes: accepted


def test_a_resume_as_it_was_trains_on(trained, capsys):
    run, _ = trained
    assert main(["train", *TINY, "--epochs", "2", "--log-dir", str(run), "--resume", "last"]) == 0
    assert "resume: from" in capsys.readouterr().out
    assert json.loads((run / "checkpoints" / "last.json").read_text())["checkpoint"] == "epoch=0002-step=00000004"
