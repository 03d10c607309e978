"""Live, crash-proof hparams: in TensorBoard's hparams dashboard from the first step, and after a SIGKILL.

Read from a real `tensorboard` on the run folder itself (the command `callbacks-kit train`
prints), where TensorBoard names the run "." and the splits' sub-runs "train" and "validation".
"""

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from helpers.paths import WORKER_PYTHONPATH, WORKERS
from helpers.tensorboard_server import hparams_sessions, tensorboard_server, wait_for

from callbacks_kit.inspection.event_report import load

# The columns as the dashboard shows them, and the tags of the run itself that fill them.
COLUMNS = {"best/val/accuracy": "val_best/accuracy", "best/val/loss": "val_best/loss"}


def metric_values(session):
    return {m["name"]["tag"]: (m["value"], m["trainingStep"]) for m in session["metricValues"]}


def scalar_runs(url):
    """`{tag: runs}` as the scalars dashboard lists them: a tag of several runs is one chart, a colour per run."""
    with urllib.request.urlopen(f"{url}data/plugin/scalars/tags", timeout=30) as reply:
        tags = json.loads(reply.read())
    return {tag: sorted(run for run in tags if tag in tags[run]) for run_tags in tags.values() for tag in run_tags}


@pytest.mark.slow
def test_a_run_is_in_the_dashboard_from_its_first_step_and_after_sigkill(tmp_path):
    run, control = tmp_path / "run", tmp_path / "control"
    control.mkdir()
    env = {**os.environ, "PYTHONPATH": WORKER_PYTHONPATH, "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen([sys.executable, str(WORKERS / "hparams_worker.py"), str(run), str(control)], env=env)
    try:
        wait_for(lambda: (control / "started").exists() or worker.poll() is not None, 120, "the first step")
        assert worker.poll() is None, "the worker died before its first step"
        with tensorboard_server(run) as url:
            # Paused after step 1: no scalar is flushed yet, but the session and its columns are there.
            experiment, sessions = wait_for(lambda: (s := hparams_sessions(url))[1] and s, what="the live session")
            assert [(m["displayName"], m["name"]["tag"]) for m in experiment["metricInfos"]] == list(COLUMNS.items())
            (session,) = sessions
            assert session["hparams"]["note"] == "killed" and session["hparams"]["lr"] == pytest.approx(0.05)
            assert session["status"] == "STATUS_UNKNOWN"  # no end yet: still running

            (control / "go").touch()
            wait_for(lambda: (control / "epoch1").exists() or worker.poll() is not None, 120, "the second epoch")
            worker.send_signal(signal.SIGKILL)
            assert worker.wait(30) == -signal.SIGKILL

            def at_epoch_end():
                (session,) = hparams_sessions(url)[1]
                return (
                    session if metric_values(session).get("val_best/accuracy", (0, 0))[1] == 8 else None
                )  # 4 steps/epoch

            killed = wait_for(at_epoch_end, what="the killed run's metrics")
            charts = scalar_runs(url)
        # Training and validation loss: one chart with two runs, which TensorBoard colours apart.
        assert charts["loss"] == ["train", "validation"] and charts["accuracy"] == ["validation"]
        assert charts["loss/step"] == ["train"] and charts["val_best/accuracy"] == ["."]
        values = metric_values(killed)
        scalars = load(run)
        assert set(values) == set(COLUMNS.values())
        for tag, (value, step) in values.items():
            last = scalars.Scalars(tag)[-1]  # TensorBoard's own reader: the latest scalar of the tag
            assert (value, step) == (pytest.approx(last.value), last.step), tag
        assert killed["status"] == "STATUS_UNKNOWN" and killed["hparams"] == session["hparams"]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_columns_are_known_at_the_start_and_extra_ones_can_be_added(tmp_path):
    import torch
    from helpers.tiny import tiny_classification_data, tiny_mlp
    from torch import nn
    from torch.utils.data import DataLoader

    from callbacks_kit import TensorBoardLogger, Trainer, accuracy
    from callbacks_kit.inspection.event_report import inspect_run

    class StopAtStart(TensorBoardLogger):
        def on_fit_start(self, trainer):
            super().on_fit_start(trainer)
            raise KeyboardInterrupt  # the run dies right after its start: the session is already there

    model = tiny_mlp()
    extra = ["val/accuracy", "val_class/macro/f1"]  # a metric's latest value, and a tag of the run itself
    logger = StopAtStart(str(tmp_path), graph=False, summary=False, hparams_metrics=extra)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                      metrics={"accuracy": accuracy}, callbacks=[logger], progress_bar=False)  # fmt: skip
    loader = DataLoader(tiny_classification_data(16), batch_size=8)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(loader, loader)
    hparams = inspect_run(tmp_path)["runs"]["."]["hparams"]
    assert list(hparams["metrics"]) == [*COLUMNS, *extra]
    assert hparams["status"] == "STATUS_FAILURE" and hparams["hparams"]["optimizer"] == "SGD"
    experiment = logger.metric_columns(trainer)
    assert [(c.group, c.tag) for c in experiment[-2:]] == [("validation", "accuracy"), ("", "val_class/macro/f1")]
