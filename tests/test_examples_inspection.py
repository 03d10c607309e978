"""Smoke test of examples/inspection_suite.py: every inspection entry is in the run's event file.

Read back with TensorBoard's own EventAccumulator, the way TensorBoard itself loads a run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.processes import run_example
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.api_pb2 import Status
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

# The example's SmallCNN: (conv, BatchNorm) pairs in four stages, then a linear head.
PARAMETERS = [
    f"{stage}.{index}.{kind}"
    for stage in ("stem", "block1", "block2", "block3")
    for index in (0, 1)
    for kind in ("weight", "bias")
] + ["head.2.weight", "head.2.bias"]
FEATURE_LAYERS = ("stem", "block1", "block2", "block3")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[EventAccumulator, str, Path]:
    log_dir = tmp_path_factory.mktemp("inspection")
    out = run_example("inspection_suite.py", "--fast", "--log-dir", str(log_dir), timeout=600)
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1  # the views in the run's one event file
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    return events.Reload(), out, log_dir


@pytest.mark.slow
def test_weight_and_gradient_histograms_of_every_parameter(run: tuple[EventAccumulator, str, Path]):
    events = run[0]
    expected = {f"{kind}/{name}" for kind in ("weights", "grads") for name in PARAMETERS}
    assert set(events.Tags()["histograms"]) == expected
    # Weights also at the start (step 0); gradients only of steps that were taken.
    assert events.Histograms("weights/stem.0.weight")[0].step == 0
    assert all(event.step >= 1 for event in events.Histograms("grads/stem.0.weight"))
    assert events.Histograms("grads/head.2.weight")[-1].histogram_value.num == 6 * 128


@pytest.mark.slow
def test_kernel_feature_map_gradcam_and_confusion_images(run: tuple[EventAccumulator, str, Path]):
    events = run[0]
    feature_maps = {f"feature_maps/image{i}/0_input" for i in range(2)} | {
        f"feature_maps/image{i}/{k}_{layer}" for i in range(2) for k, layer in enumerate(FEATURE_LAYERS, start=1)
    }
    expected = {"kernels/stem.0", "kernels/block1.0", "gradcam/block3", "confusion_matrix/val", *feature_maps}
    assert set(events.Tags()["images"]) == expected
    for tag in expected:
        image = events.Images(tag)[-1]
        assert image.width > 0 and image.height > 0 and image.encoded_image_string.startswith(b"\x89PNG"), tag


@pytest.mark.slow
def test_graph_summary_and_scalars(run: tuple[EventAccumulator, str, Path]):
    events, out, log_dir = run
    tags = events.Tags()
    assert tags["graph"] and any("conv" in node.op.lower() for node in events.Graph().node)
    assert "model/summary/text_summary" in tags["tensors"]
    assert {"lr/group0", "val_best/accuracy", "val_best/loss"} <= set(tags["scalars"])
    assert {"loss", "accuracy"} <= set(EventAccumulator(str(log_dir / "validation")).Reload().Tags()["scalars"])
    assert "validation: scalars loss, accuracy" in out
    assert f"tensorboard --logdir {log_dir}" in out


@pytest.mark.slow
def test_hparams_hold_the_settings_and_name_the_final_metrics(run: tuple[EventAccumulator, str, Path]):
    events = run[0]
    start, metrics, status = {}, set(), None
    for content in events.PluginTagToContent("hparams").values():
        data = HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            start = {k: getattr(v, v.WhichOneof("kind")) for k, v in data.session_start_info.hparams.items()}
        if data.HasField("experiment"):
            metrics = {info.name.tag for info in data.experiment.metric_infos}
        if data.HasField("session_end_info"):
            status = Status.Name(data.session_end_info.status)
    assert start["model"] == "SmallCNN" and start["optimizer"] == "SGD"
    assert start["image_size"] == 48 and start["train_samples"] == 96  # the example's own hparams
    assert {"val_best/accuracy", "val_best/loss"} <= metrics
    # TensorBoard shows each metric as the run's latest scalar of that tag: they must exist.
    assert metrics <= set(events.Tags()["scalars"])
    assert status == "STATUS_SUCCESS"
