"""The main job's training views: on by default at their cadences, off with --no-inspection, bad values refused."""

import pytest

from callbacks_kit import BatchGrid, LayerStats
from callbacks_kit.cli import build_parser, job_callbacks
from callbacks_kit.errors import CLIError

CLASSES = ["a", "b"]


def views(*argv: str):
    return job_callbacks.training_view_callbacks(build_parser().parse_args(["train", *argv]), CLASSES)


def test_defaults_and_switches():
    stats, grid = views()
    assert isinstance(stats, LayerStats) and stats.every_n_steps == 20 and stats.layers is None
    assert isinstance(grid, BatchGrid) and grid.every_n_epochs is None and grid.num_images == 16
    assert grid.class_names == CLASSES
    assert views("--no-inspection") == []
    assert [type(c) for c in views("--layer-stats-every", "0")] == [BatchGrid]
    assert [type(c) for c in views("--batch-grid-images", "0")] == [LayerStats]
    stats, grid = views("--layer-stats-layers", "layer4|fc", "--batch-grid-every", "3", "--batch-grid-images", "4")
    assert stats.layers.pattern == "layer4|fc" and grid.every_n_epochs == 3 and grid.num_images == 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--layer-stats-every", "-1"], "--layer-stats-every must be 0 or more"),
        (["--batch-grid-every", "-2"], "--batch-grid-every must be 0 or more"),
        (["--batch-grid-images", "-1"], "--batch-grid-images must be 0 or more"),
        (["--layer-stats-every", "0", "--layer-stats-layers", "fc"], "--layer-stats-layers chooses the layers"),
        (["--layer-stats-layers", "("], "not a valid regular expression"),
    ],
)
def test_bad_values_are_refused_before_training(argv, message):
    with pytest.raises((CLIError, ValueError), match=message):
        views(*argv)
