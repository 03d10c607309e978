"""Kernel grids, feature maps and Grad-CAM, read back from the event file; hooks gone afterwards."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from callbacks_kit.callbacks.base import Callback
from callbacks_kit.callbacks.feature_maps import FeatureMaps
from callbacks_kit.callbacks.grad_cam import GradCAM
from callbacks_kit.callbacks.kernel_grid import KernelGrid
from callbacks_kit.callbacks.tensorboard_logger import TensorBoardLogger
from callbacks_kit.data import ShapesDataset
from callbacks_kit.hooks import hooked_modules
from callbacks_kit.inspection.event_report import load
from callbacks_kit.inspection.probe import probe_batch
from callbacks_kit.inspection.render import jet
from callbacks_kit.layers import LayerNotFoundError
from callbacks_kit.trainer import Trainer


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 8, 3, padding=1, stride=2),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 6),
    )


class Watch(Callback):
    """Checks what training steps see: no hooks, train mode, no stray gradients after the probes."""

    order = 200

    def __init__(self):
        self.hooks_during_training = []
        self.modes = []
        self.grads_after_epoch = []

    def on_train_batch_start(self, trainer):
        self.hooks_during_training += hooked_modules(trainer.unwrapped_model)
        self.modes.append(trainer.unwrapped_model.training)

    def on_epoch_end(self, trainer):  # runs after the image callbacks (order 200)
        self.grads_after_epoch.append([p.grad for p in trainer.unwrapped_model.parameters()])


def fit(tmp_path, callbacks, model=None, epochs=2):
    model = model or small_cnn()
    train = DataLoader(ShapesDataset(32, 24, seed=0), batch_size=8, shuffle=True)
    val = DataLoader(ShapesDataset(16, 24, seed=1), batch_size=8)
    trainer = Trainer(
        model,
        torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2),
        nn.CrossEntropyLoss(),
        callbacks=[TensorBoardLogger(str(tmp_path), graph=False, summary=False), *callbacks],
        progress_bar=False,
    )
    trainer.fit(train, val, epochs=epochs)
    return trainer, load(tmp_path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("images")
    watch = Watch()
    callbacks = [KernelGrid(["0", "2"]), FeatureMaps(num_images=2), GradCAM(num_images=3, image_size=64), watch]
    trainer, acc = fit(path, callbacks)
    return trainer, acc, watch


def test_kernel_grids(run):
    _, acc, _ = run
    colour = acc.Images("kernels/0")
    assert [e.step for e in colour] == [0, 4, 8]  # at the start and each epoch end
    # 4 colour kernels 3x3 enlarged to 24 px, 2x2 grid with 2 px padding.
    assert (colour[-1].width, colour[-1].height) == (2 * 24 + 3 * 2, 2 * 24 + 3 * 2)
    grey = acc.Images("kernels/2")[-1]  # 8 kernels x 4 input channels, 12 px tiles, 1 px padding
    assert (grey.width, grey.height) == (4 * 12 + 5, 8 * 12 + 9)


def test_kernel_image_normalises_each_kernel():
    grid = KernelGrid(tile_size=3).kernel_image(torch.stack([torch.zeros(3, 3, 3), torch.arange(27.0).view(3, 3, 3)]))
    assert grid.shape[0] == 3 and grid.min() >= 0 and grid.max() <= 1
    assert torch.allclose(grid[:, 2:5, 2:5], torch.full((3, 3, 3), 0.5))  # a constant kernel is mid-grey


def test_feature_maps_tags_sizes_and_input_once(run):
    _, acc, _ = run
    tags = set(acc.Tags()["images"])
    for i in (0, 1):
        assert {f"feature_maps/image{i}/0_input", f"feature_maps/image{i}/1_0", f"feature_maps/image{i}/2_2"} <= tags
    assert len(acc.Images("feature_maps/image0/0_input")) == 1
    assert [e.step for e in acc.Images("feature_maps/image1/2_2")] == [4, 8]
    first = acc.Images("feature_maps/image0/1_0")[-1]  # 4 channels of 24x24 enlarged to 48: 2x2 grid
    assert (first.width, first.height) == (2 * 48 + 3 * 2, 2 * 48 + 3 * 2)
    second = acc.Images("feature_maps/image0/2_2")[-1]  # 8 channels of 12x12 enlarged to 36: 3 columns
    assert (second.width, second.height) == (3 * 36 + 4 * 2, 3 * 36 + 4 * 2)


def test_gradcam_image(run):
    _, acc, _ = run
    events = acc.Images("gradcam/2")  # default target: the last conv block
    assert [e.step for e in events] == [4, 8]
    # 3 tiles of 64 px in 2 columns (2 rows), each under a title strip.
    assert events[-1].width == 2 * 64 + 3 * 2 and events[-1].height > 2 * 64 + 3 * 2 + 2 * 20


def test_hooks_removed_train_mode_restored_no_param_grads(run):
    trainer, _, watch = run
    assert hooked_modules(trainer.unwrapped_model) == []
    assert watch.hooks_during_training == []
    assert all(watch.modes)
    assert all(g is None for grads in watch.grads_after_epoch for g in grads)


def test_probe_is_the_first_validation_samples(run):
    trainer, _, _ = run
    inputs, targets = probe_batch(trainer, 3)
    dataset = ShapesDataset(16, 24, seed=1)
    assert torch.equal(inputs, torch.stack([dataset[i][0] for i in range(3)]))
    assert targets.tolist() == [dataset[i][1] for i in range(3)]


def test_gradcam_works_on_a_frozen_backbone(tmp_path):
    model = small_cnn()
    for p in model[:4].parameters():
        p.requires_grad_(False)
    _, acc = fit(tmp_path, [GradCAM("0", num_images=2)], model=model, epochs=1)
    assert len(acc.Images("gradcam/0")) == 1


def test_gradcam_heatmap_points_at_the_evidence():
    # Class 1 scores the mean activation; only the top-left quadrant of the input is lit.
    class Mean(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1, bias=False)
            nn.init.ones_(self.conv.weight)

        def forward(self, x):
            score = self.conv(x).mean((1, 2, 3))
            return torch.stack([torch.zeros_like(score), score], dim=1)

    class Fake:
        unwrapped_model = Mean()
        device = torch.device("cpu")
        loss_fn = nn.CrossEntropyLoss()

        def forward(self, inputs, targets, model=None):
            outputs = model(inputs)
            return outputs.sum(), outputs

    image = torch.zeros(1, 1, 8, 8)
    image[:, :, :4, :4] = 1
    cams, probs = GradCAM("conv").heatmaps(Fake(), image, None)
    assert probs.argmax().item() == 1
    assert cams[0, 1:3, 1:3].min() == 1 and cams[0, 5:, :].max() == 0 and cams[0, :, 5:].max() == 0


def test_bad_layer_names_fail_early(tmp_path):
    with pytest.raises(LayerNotFoundError, match="closest"):
        fit(tmp_path, [FeatureMaps(["conv9"])], epochs=1)
    with pytest.raises(ValueError, match="not an nn.Conv2d"):
        fit(tmp_path, [KernelGrid(["6"])], epochs=1)


def test_jet_colormap():
    colours = jet(torch.tensor([[0.0, 0.5, 1.0]]))
    assert colours.shape == (3, 1, 3)
    assert colours[:, 0, 0].argmax() == 2 and colours[:, 0, 2].argmax() == 0  # blue low, red high
    assert colours[1, 0, 1] == 1  # green in the middle


def test_bf16_autocast_run(tmp_path):
    model = small_cnn()
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        nn.CrossEntropyLoss(),
        callbacks=[
            TensorBoardLogger(str(tmp_path), graph=False, summary=False),
            FeatureMaps(num_images=1),
            GradCAM(num_images=2),
        ],
        mixed_precision="bf16",
        progress_bar=False,
    )
    trainer.fit(DataLoader(ShapesDataset(16, 24), batch_size=8), DataLoader(ShapesDataset(8, 24, seed=1), batch_size=8))
    tags = set(load(tmp_path).Tags()["images"])
    assert {"gradcam/2", "feature_maps/image0/2_2"} <= tags
