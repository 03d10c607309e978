"""`Trainer(compile=...)`: trains like eager, compiles once, and probes use the uncompiled module.

The quick tests compile with the "aot_eager" backend (the same graph capture, no code
generation); one slow test runs the default inductor backend, which needs a C++ compiler.
"""

from pathlib import Path

import pytest
import torch
import torch._dynamo
from helpers.tiny import tiny_classification_data, tiny_mlp
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters
from torch.utils.data import DataLoader

from callbacks_kit import Callback, FeatureMaps, GradCAM, TensorBoardLogger, Trainer
from callbacks_kit.data import ShapesDataset
from callbacks_kit.hooks import ActivationCapture, hooked_modules
from callbacks_kit.inspection.event_report import load


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


class FramesPerStep(Callback):
    """Records how many frames the backend has compiled after each training step."""

    order = 1000

    def __init__(self, backend: CompileCounterWithBackend) -> None:
        self.backend = backend
        self.frames: list[int] = []

    def on_train_batch_end(self, trainer: Trainer) -> None:
        self.frames.append(self.backend.frame_count)


def train_mlp(compile, callbacks=(), epochs: int = 2) -> Trainer:
    model = tiny_mlp()
    trainer = Trainer(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        nn.CrossEntropyLoss(),
        callbacks=list(callbacks),
        seed=0,
        log_every_n_steps=3,
        progress_bar=False,
        compile=compile,
    )
    train = DataLoader(tiny_classification_data(64), batch_size=8, shuffle=True)  # 8 full batches: one shape
    trainer.fit(train, DataLoader(tiny_classification_data(32, seed=1), batch_size=8), epochs=epochs)
    return trainer


def test_compiled_training_matches_eager_and_never_recompiles():
    eager = train_mlp(compile=False)
    backend = CompileCounterWithBackend("aot_eager")
    frames = FramesPerStep(backend)
    compiled = train_mlp(compile={"backend": backend}, callbacks=[frames])

    assert compiled.model is not compiled.unwrapped_model  # training ran through the compiled wrapper
    for a, b in zip(eager.unwrapped_model.parameters(), compiled.unwrapped_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert compiled.state.metrics["val/loss"] == pytest.approx(eager.state.metrics["val/loss"], rel=1e-4)
    # The eval graph of the sanity check (reused by validation) and the training graph: nothing
    # after the first step, across log steps, validation and the second epoch.
    assert len(frames.frames) == 16 and frames.frames == [frames.frames[0]] * 16
    assert frames.frames[0] == 2
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_unwrapped_model_is_the_users_module_and_probe_forwards_leave_no_trace():
    backend = CompileCounterWithBackend("aot_eager")

    class Probe(Callback):
        """A feature-map style probe: hooks on the uncompiled module for one forward."""

        captured: list[torch.Size] = []

        def on_train_batch_end(self, trainer: Trainer) -> None:
            net = trainer.unwrapped_model
            with torch.no_grad(), ActivationCapture(net, ["0"]) as capture:
                net(trainer.last_inputs)
            self.captured.append(capture.outputs["0"].shape)

    model = tiny_mlp()
    frames = FramesPerStep(backend)
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.CrossEntropyLoss(),
        callbacks=[Probe(), frames],
        progress_bar=False,
        compile={"backend": backend},
    )
    assert trainer.unwrapped_model is model
    assert isinstance(trainer.model, torch._dynamo.eval_frame.OptimizedModule)
    trainer.fit(DataLoader(tiny_classification_data(48), batch_size=8), epochs=1)
    assert Probe.captured == [torch.Size([8, 16])] * 6
    assert frames.frames == [frames.frames[0]] * 6  # the probes' hooks never reached the compiled graph
    assert hooked_modules(model) == []


def test_feature_maps_and_gradcam_work_on_a_compiled_model(tmp_path: Path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 6),
    )
    backend = CompileCounterWithBackend("aot_eager")
    frames = FramesPerStep(backend)
    trainer = Trainer(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        nn.CrossEntropyLoss(),
        callbacks=[
            TensorBoardLogger(str(tmp_path), graph=False, summary=False),
            FeatureMaps(num_images=1),
            GradCAM(num_images=2),
            frames,
        ],
        progress_bar=False,
        compile={"backend": backend},
    )
    train = DataLoader(ShapesDataset(32, 24, seed=0), batch_size=8, shuffle=True)
    trainer.fit(train, DataLoader(ShapesDataset(16, 24, seed=1), batch_size=8), epochs=2)
    images = set(load(tmp_path).Tags()["images"])
    assert "gradcam/2" in images and "feature_maps/image0/2_2" in images
    assert frames.frames == [frames.frames[0]] * 8  # epoch-end probes did not recompile the training graph
    assert hooked_modules(model) == []


@pytest.mark.slow
def test_inductor_compile_trains_on_the_cpu():
    eager = train_mlp(compile=False, epochs=1)
    compiled = train_mlp(compile=True, epochs=1)  # inductor: generates and builds C++ for the CPU
    for a, b in zip(eager.unwrapped_model.parameters(), compiled.unwrapped_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert not counters["graph_break"], dict(counters["graph_break"])
