"""The main job's error-analysis views as a real TensorBoard server lists them, over HTTP."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from helpers.tensorboard_server import tensorboard_server

from callbacks_kit.cli import build_parser, main
from callbacks_kit.cli.job_callbacks import error_analysis_callbacks
from callbacks_kit.errors import CLIError

TINY = ["--epochs", "1", "--train-samples", "48", "--val-samples", "24", "--batch-size", "16", "--image-size", "32",
        "--no-progress"]  # fmt: skip


def get(url: str, path: str) -> object:
    with urllib.request.urlopen(f"{url}{path}", timeout=10) as reply:
        return json.loads(reply.read())


@pytest.mark.slow
def test_tensorboard_serves_every_view_of_the_main_job(tmp_path: Path):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--embeddings", "12", "--log-dir", str(run)]) == 0
    with tensorboard_server(run, timeout=120) as url:
        deadline = time.monotonic() + 120
        while True:
            try:
                plugins = get(url, "data/plugins_listing")
                if plugins["pr_curves"]["enabled"] and plugins["projector"]["enabled"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "TensorBoard did not list the run within 120 s"
            time.sleep(1)
        for plugin in ("scalars", "images", "text", "hparams", "pr_curves", "projector"):
            assert plugins[plugin]["enabled"], plugin
        pr_tags = get(url, "data/plugin/pr_curves/tags")["."]
        assert {f"pr_curve/val/{name}" for name in ("circle", "square", "triangle")} <= set(pr_tags)
        assert "top_losses/val" in get(url, "data/plugin/images/tags")["."]
        assert {"class_report/val/text_summary", "top_losses/val/text_summary"} <= set(
            get(url, "data/plugin/text/tags")["."]
        )
        assert "val_class/macro/f1" in get(url, "data/plugin/scalars/tags")["."]
        assert get(url, "data/plugin/projector/runs") == ["."]
        info = get(url, "data/plugin/projector/info?run=.")
        (embedding,) = info["embeddings"]
        assert embedding["tensorShape"] == [12, 512] and embedding["metadataPath"] and embedding["sprite"]


def test_the_main_job_turns_the_views_on_and_checks_their_flags():
    classes = ["a", "b", "c"]
    parse = build_parser().parse_args
    default = [type(c).__name__ for c in error_analysis_callbacks(parse(["train"]), classes)]
    assert default == ["TopLosses", "ClassReport"]
    asked = error_analysis_callbacks(parse(["train", "--embeddings", "50", "--top-losses", "0"]), classes)
    assert [type(c).__name__ for c in asked] == ["ClassReport", "Embeddings"] and asked[1].num_samples == 50
    assert error_analysis_callbacks(parse(["train", "--no-inspection", "--no-class-report"]), classes) == []
    with pytest.raises(CLIError, match="--embeddings must be 0 \\(off\\) or more samples, got -1"):
        error_analysis_callbacks(parse(["train", "--embeddings", "-1"]), classes)
