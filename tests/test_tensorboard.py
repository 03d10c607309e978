"""TensorBoardLogger: per-split scalars, the custom-scalars layout, hparams with real metrics, graph, summary."""

import os
import textwrap
import warnings

import pytest
import torch
from helpers.processes import run_distributed
from helpers.tensorboard_server import tensorboard_order
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from callbacks_kit.callbacks.base import Callback
from callbacks_kit.callbacks.layer_stats import LayerStats
from callbacks_kit.callbacks.tensorboard_logger import TensorBoardLogger
from callbacks_kit.data import ShapesDataset
from callbacks_kit.inspection.event_report import event_files, inspect_run
from callbacks_kit.metrics import accuracy
from callbacks_kit.trainer import Trainer


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6)
    )


def fit(log_dir, model=None, callbacks=(), epochs=2, loss_fn=None, **logger_options):
    model = model or small_cnn()
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        loss_fn or nn.CrossEntropyLoss(),
        metrics={"accuracy": accuracy},
        callbacks=[TensorBoardLogger(str(log_dir), **logger_options), *callbacks],
        log_every_n_steps=2,
        progress_bar=False,
    )
    state = trainer.fit(
        DataLoader(ShapesDataset(32, 16, seed=0), batch_size=8, shuffle=True),
        DataLoader(ShapesDataset(16, 16, seed=1), batch_size=8),
        epochs=epochs,
    )
    return trainer, state


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("tb")
    hparams = {"note": "first", "dropout": 0.1, "sizes": [1, 2], "pretrained": False}
    trainer, state = fit(path, callbacks=[LayerStats(every_n_steps=4)], hparams=hparams)
    return path, trainer, dict(state.metrics), inspect_run(path)["runs"]


def test_each_split_has_its_sub_run_with_the_same_tags(run):
    _, trainer, metrics, runs = run
    train, validation, main = runs["train"]["scalars"], runs["validation"]["scalars"], runs["."]["scalars"]
    assert set(train) == {"loss", "loss/step"} and set(validation) == {"loss", "accuracy"}
    assert train["loss/step"]["count"] == 4 and train["loss/step"]["last_step"] == 8  # every 2 of 8 steps
    assert train["loss"]["count"] == 2 and train["loss"]["last_value"] == pytest.approx(metrics["train/epoch_loss"])
    assert validation["loss"]["count"] == 2 and validation["loss"]["last_value"] == pytest.approx(metrics["val/loss"])
    assert validation["accuracy"]["last_value"] == pytest.approx(metrics["val/accuracy"])
    assert train["loss"]["last_step"] == validation["loss"]["last_step"] == 8  # one chart, one x
    logger = trainer.callbacks.find(TensorBoardLogger)[0]
    assert main["val_best/loss"]["last_value"] == pytest.approx(logger.best["val/loss"])
    assert {"val_best/accuracy", "optimisation/grad_norm", "lr/group0", "perf/samples_per_sec"} <= set(main)
    assert not any(tag.startswith(("train/", "val/", "best/")) for tag in main)  # nothing twice


def test_the_scalars_dashboard_opens_on_train_and_validation(run):
    _, _, _, runs = run
    tags = {tag for report in runs.values() for tag in report["scalars"]}
    categories = list(dict.fromkeys(tag.split("/")[0] for tag in tensorboard_order(tags)))
    # The split charts (train against validation) first; the per-layer statistics after them, in one group.
    # TensorBoard opens the first two: accuracy, and loss with train against validation.
    assert categories == ["accuracy", "loss", "lr", "optimisation", "per_layer", "perf", "val_best"]
    assert {"per_layer/act_mean/0", "per_layer/grad_norm/4"} <= tags


def test_train_and_val_loss_share_one_chart(run):
    _, _, _, runs = run
    layout = runs["."]["custom_scalars"]
    assert layout["losses"] == {"loss: train vs validation": ["^loss(/step)?$"]}
    assert layout["metrics"]["accuracy"] == ["^accuracy(/step)?$", "^val_best/accuracy$"]
    assert layout["optimisation"]["gradient norm"] == ["^optimisation/grad_norm$"]


def test_hparams_hold_the_real_best_metrics_and_typed_values(run):
    _, trainer, metrics, runs = run
    hparams = runs["."]["hparams"]
    assert hparams["status"] == "STATUS_SUCCESS"
    assert hparams["hparams"]["note"] == "first" and hparams["hparams"]["sizes"] == "[1, 2]"
    assert hparams["hparams"]["pretrained"] is False  # a boolean, not 0.0
    assert hparams["hparams"]["lr"] == pytest.approx(0.05) and hparams["hparams"]["optimizer"] == "SGD"
    assert hparams["hparams"]["model"] == "Sequential" and hparams["hparams"]["epochs"] == 2
    assert set(hparams["shown"]) == {"model", "lr", "batch_size", "epochs", "optimizer"}  # what the dashboard shows
    logger = trainer.callbacks.find(TensorBoardLogger)[0]
    assert list(hparams["metrics"]) == ["best/val/accuracy", "best/val/loss"]  # higher is better first
    assert hparams["metrics"]["best/val/loss"] == pytest.approx(logger.best["val/loss"])
    assert hparams["metrics"]["best/val/accuracy"] == pytest.approx(logger.best["val/accuracy"])
    assert logger.best["val/loss"] <= metrics["val/loss"]


def test_graph_and_summary(run):
    _, _, _, runs = run
    report = runs["."]
    assert report["graphs"]["nodes"] > 5 and "aten::_convolution" in report["graphs"]["ops"]
    (text,) = report["text"].values()
    assert "Conv2d" in text["text"] and "Total params" in text["text"]


def test_one_event_file_per_run_folder(run):
    path, *_ = run
    assert sorted(str(f.parent.relative_to(path)) for f in event_files(path)) == [".", "train", "validation"]


def test_failed_run_still_writes_hparams_with_failure_status(tmp_path):
    class Boom(Callback):
        def on_epoch_end(self, trainer):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fit(tmp_path, callbacks=[Boom()], graph=False, summary=False)
    report = inspect_run(tmp_path)["runs"]["."]
    assert report["hparams"]["status"] == "STATUS_FAILURE"
    assert report["hparams"]["metrics"]["best/val/loss"] is not None


def test_untraceable_model_warns_and_trains(tmp_path):
    class DictOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = small_cnn()

        def forward(self, x):
            return {"logits": self.net(x), "note": None}  # tracing rejects non-tensor outputs

    def loss(outputs, targets):
        return F.cross_entropy(outputs["logits"], targets)

    model = DictOut()
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        loss,
        callbacks=[TensorBoardLogger(str(tmp_path))],
        progress_bar=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(DataLoader(ShapesDataset(16, 16), batch_size=8), epochs=1)
    assert any("graph could not be traced" in str(w.message) for w in caught)
    assert inspect_run(tmp_path)["runs"]["."]["graphs"] == {}


def test_best_metrics_survive_a_state_dict_round_trip():
    logger = TensorBoardLogger()
    logger.best = {"val/loss": 0.5}
    other = TensorBoardLogger()
    other.load_state_dict(logger.state_dict())
    assert other.best == {"val/loss": 0.5}


TWO_PROCESS_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    from torch.utils.data import DataLoader
    from callbacks_kit.callbacks.tensorboard_logger import TensorBoardLogger
    from callbacks_kit.callbacks.weight_histograms import WeightHistograms
    from callbacks_kit.callbacks.feature_maps import FeatureMaps
    from callbacks_kit.callbacks.kernel_grid import KernelGrid
    from callbacks_kit.callbacks.grad_cam import GradCAM
    from callbacks_kit.callbacks.confusion_matrix import ConfusionMatrix
    from callbacks_kit.callbacks.layer_stats import LayerStats
    from callbacks_kit.callbacks.batch_grid import BatchGrid
    from callbacks_kit.data import ShapesDataset
    from callbacks_kit.hooks import hooked_modules
    from callbacks_kit.metrics import accuracy
    from callbacks_kit.trainer import Trainer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6))
    callbacks = [TensorBoardLogger(sys.argv[1]), WeightHistograms(), KernelGrid(), FeatureMaps(), GradCAM(num_images=2),
                 ConfusionMatrix(), LayerStats(every_n_steps=1), BatchGrid()]
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), nn.CrossEntropyLoss(),
                      metrics={"accuracy": accuracy}, callbacks=callbacks, log_every_n_steps=1, progress_bar=False)
    val = DataLoader(ShapesDataset(16, 16, seed=1), batch_size=8)
    trainer.fit(DataLoader(ShapesDataset(32, 16), batch_size=8), val, epochs=1)
    assert hooked_modules(model) == []
    print(f"rank {trainer.accelerator.process_index} done, writer {trainer.tb_writer}", flush=True)
    """
)


@pytest.mark.slow
def test_two_processes_write_one_event_file_per_run_folder(tmp_path):
    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    run_dir = tmp_path / "run"
    out = run_distributed(script, str(run_dir)).stdout
    assert "rank 0 done" in out and "rank 1 done" in out
    files = event_files(run_dir)
    assert sorted(str(f.parent.relative_to(run_dir)) for f in files) == [".", "train", "validation"], files
    runs = inspect_run(run_dir)["runs"]
    report, train = runs["."], runs["train"]["scalars"]
    assert train["loss/step"]["count"] == 2  # 32 samples / 2 processes / 8 per batch
    assert {"kernels/0", "confusion_matrix/val", "gradcam/2", "train_batch", "per_layer/act_hist/0"} <= set(
        report["images"]
    )
    assert (
        report["scalars"]["optimisation/grad_norm"]["count"] == report["scalars"]["per_layer/grad_norm/6"]["count"] == 2
    )
    assert report["hparams"]["hparams"]["processes"] == 2


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    from callbacks_kit.callbacks.tensorboard_logger import default_log_dir

    folders = [default_log_dir(str(tmp_path)) for _ in range(3)]
    assert len(set(folders)) == 3 and all(os.path.isdir(f) for f in folders)
    if folders[0][-2:] != folders[2][-2:]:  # the clock ticked between calls: nothing to compare
        return
    assert folders[1] == folders[0] + "-2" and folders[2] == folders[0] + "-3"


def test_a_resumed_run_drops_the_interrupted_runs_later_points_in_every_split(tmp_path):
    from helpers.tiny import tiny_classification_data, tiny_mlp

    from callbacks_kit.callbacks.model_checkpoint import ModelCheckpoint

    def trainer():
        model = tiny_mlp()
        callbacks = [
            TensorBoardLogger(str(tmp_path), graph=False, summary=False),
            ModelCheckpoint(tmp_path / "ckpt", "val/loss", save_top_k=-1),
        ]
        return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                       metrics={"accuracy": accuracy}, callbacks=callbacks, progress_bar=False)  # fmt: skip

    loader = DataLoader(tiny_classification_data(32), batch_size=8)  # 4 steps per epoch
    trainer().fit(loader, loader, epochs=3)
    trainer().fit(loader, loader, epochs=3, resume_from=str(tmp_path / "ckpt" / "epoch=0001-step=00000004"))
    runs = inspect_run(tmp_path)["runs"]
    for split in ("train", "validation"):  # the first run's steps 8 and 12, then the resumed run's: once each
        assert runs[split]["scalars"]["loss"]["count"] == 3, split
    assert runs["."]["scalars"]["val_best/loss"]["count"] == 3
