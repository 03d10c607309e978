"""The command line's help and what it prints before and after a command: defaults stated once, no option a
command cannot use, a parser that needs no torch, a TensorBoard command that runs as printed, the confusion matrix.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from helpers.paths import REPO
from helpers.tensorboard_server import tensorboard_server

from callbacks_kit.cli import build_parser, main
from callbacks_kit.cli.evaluate import confusion_text
from callbacks_kit.cli.run_dir import tensorboard_command


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser, by name."""
    (subparsers,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def rendered_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """An option's help as `--help` prints it (the formatter's additions and %-expansion included)."""
    return parser._get_formatter()._expand_help(action)


OPTIONS = [
    (name, action)
    for name, parser in commands().items()
    for action in parser._actions
    if action.option_strings and not isinstance(action, argparse._HelpAction) and action.help != argparse.SUPPRESS
]


@pytest.mark.parametrize(("command", "action"), OPTIONS, ids=[f"{c} {a.option_strings[0]}" for c, a in OPTIONS])
def test_every_option_has_help_that_states_its_default_once(command: str, action: argparse.Action):
    text = rendered_help(commands()[command], action)
    assert text.strip(), f"callbacks-kit {command} {action.option_strings[0]} has no help"
    assert "default: None" not in text and "(default: False)" not in text, text
    switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
    if switch or action.required:
        return  # a switch is off unless given; a required option has no default to state
    assert text.count("default:") == 1, f"{command} {action.option_strings[0]}: {text}"
    if action.default is not None:
        assert f"default: {action.default}" in text, text  # the value parsed is the value stated


def test_the_options_a_newcomer_looked_for_state_their_defaults():
    train = commands()["train"]
    helps = {a.option_strings[0]: rendered_help(train, a) for a in train._actions if a.option_strings}
    for flag, default in [("--epochs", "5"), ("--weight-decay", "0.05"), ("--seed", "0"), ("--mixed-precision", "no")]:
        assert helps[flag].endswith(f"(default: {default})"), helps[flag]
    assert helps["--max-grad-norm"].endswith("(default: no clipping)")
    assert helps["--val-split"].endswith("(default: 0.2)") and helps["--crop-ratio"].endswith("else 0.875)")
    assert helps["--early-stop-patience"].endswith("(default: never)")


@pytest.mark.parametrize(
    ("flag", "why"),
    [
        (["--epochs", "3"], "the sweep's length is --lr-find-steps"),
        (["--scheduler", "cosine"], "the sweep's LR follows its own exponential schedule"),
        (["--warmup", "10"], "the sweep's LR follows its own exponential schedule"),
        (["--lr", "0.1"], "the sweep sets the LR itself"),
        (["--grad-accum", "2"], "every step of the sweep is one batch"),
    ],
)
def test_lr_find_refuses_options_of_training_it_cannot_use(
    flag: list[str], why: str, capsys: pytest.CaptureFixture[str]
):
    with pytest.raises(SystemExit) as exit_:
        main(["lr-find", *flag])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {flag[0]} is an option of `callbacks-kit train`: {why}" in err
    usage = commands()["lr-find"].format_usage()
    assert flag[0] not in re.findall(r"--[a-z-]+", usage)  # not offered either


def test_help_and_argument_errors_import_no_torch():
    """The parser and its errors come back before torch, torchvision or Accelerate load (benchmark section 10)."""
    script = (
        "import contextlib, io, sys\n"
        "from callbacks_kit.cli import build_parser\n"
        "for argv in [['--help'], *([c, '--help'] for c in ('train', 'lr-find', 'predict', 'evaluate', 'export',"
        " 'inspect')), ['train', '--epochs', 'x']]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            build_parser().parse_args(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'accelerate', 'numpy', 'PIL') if m in sys.modules)\n"
        "print('loaded:', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "loaded: []", done.stdout


def test_confusion_matrix_text_has_a_header_of_predicted_classes():
    text = confusion_text(["circle", "square", "a_very_long_name"], [[10, 0, 1], [2, 1234, 0], [0, 0, 7]])
    header, *rows = text.splitlines()
    assert header.split() == ["true", "/", "predicted", "circle", "square", "a_very_lo~"]
    assert rows[1].split() == ["square", "2", "1234", "0"]
    # Every count sits right-aligned under its class's header.
    for row in rows:
        for name in ("circle", "square", "a_very_lo~"):
            end = header.index(name) + len(name)
            assert row[end - 1] != " " and (end == len(row) or row[end] == " ")


def test_the_printed_tensorboard_command_runs_as_printed_without_an_activated_venv(tmp_path: Path, monkeypatch):
    """The README's set-up never activates the venv: the command must name TensorBoard by its path."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != bin_dir)
    monkeypatch.setenv("PATH", path)
    command = tensorboard_command(tmp_path / "run")
    program = shlex.split(command)[:-2]
    assert shlex.split(command)[-2:] == ["--logdir", str(tmp_path / "run")]
    assert program != ["tensorboard"] and Path(program[0]).is_file(), command
    (tmp_path / "run").mkdir()
    with tensorboard_server(tmp_path / "run", program=program, env={**os.environ, "PATH": path}) as url:
        with urllib.request.urlopen(f"{url}data/logdir", timeout=30) as reply:
            assert str(tmp_path / "run") in reply.read().decode()


def test_the_command_is_plain_tensorboard_when_path_finds_this_one(monkeypatch):
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert tensorboard_command("runs/x y") == "tensorboard --logdir 'runs/x y'"
