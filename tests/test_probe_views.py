"""Views that show something at any input size: probe images spread over the classes, layers large enough.

An ImageFolder lists its images class by class, so "the first N validation images" were all
of the first class; and at 32 px a ResNet's `layer4` is 1x1, a flat tint in Grad-CAM and grey
tiles in the feature maps. Read back with TensorBoard's own loader.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from callbacks_kit import FeatureMaps, GradCAM, TensorBoardLogger, Trainer
from callbacks_kit.data import dataset_labels
from callbacks_kit.inspection.event_report import load
from callbacks_kit.inspection.probe import spread_indices

NO_NORMALISATION = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


class SortedGreys(Dataset):
    """Like an ImageFolder: samples listed class by class, each image one grey level, `(class + 1) / 10`."""

    def __init__(self, per_class: int, classes: int = 4, side: int = 32) -> None:
        self.targets = [label for label in range(classes) for _ in range(per_class)]
        self.classes = [f"class{label}" for label in range(classes)]
        self.side = side

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = self.targets[index]
        return torch.full((3, self.side, self.side), (label + 1) / 10), label


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=4)


def strided_cnn() -> nn.Module:
    """Four stages that halve the image: at 16 px their outputs are 8, 4, 2 and 1 pixels square."""
    torch.manual_seed(0)
    stages = [nn.Sequential(nn.Conv2d(3 if i == 0 else 4, 4, 3, stride=2, padding=1), nn.ReLU()) for i in range(4)]
    return nn.Sequential(*stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))


def fit(tmp_path, model, callbacks, val):
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        nn.CrossEntropyLoss(),
        callbacks=[TensorBoardLogger(str(tmp_path), graph=False, summary=False), *callbacks],
        progress_bar=False,
    )
    trainer.fit(
        DataLoader(SortedGreys(2, side=16), batch_size=4, shuffle=True), DataLoader(val, batch_size=8), epochs=1
    )
    return load(tmp_path)


def grey_level(event) -> float:
    pixels = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("L"), dtype=np.float64)
    return float(np.median(pixels)) / 255


def test_the_probe_images_are_spread_over_the_classes(tmp_path):
    val = SortedGreys(per_class=5, side=16)
    maps = FeatureMaps(["0"], num_images=6, **NO_NORMALISATION)
    events = fit(tmp_path, strided_cnn(), [maps], val)
    shown = [round(grey_level(events.Images(f"feature_maps/image{i}/0_input")[0]) * 10) - 1 for i in range(6)]
    assert shown == [0, 1, 2, 3, 0, 1]  # the first of each class in turn, not six of class 0


def test_spread_indices_read_the_labels_without_loading_images(tmp_path):
    for label, count in (("a", 3), ("b", 1), ("c", 2)):
        for i in range(count):
            (tmp_path / label).mkdir(exist_ok=True)
            Image.new("RGB", (4, 4)).save(tmp_path / label / f"{i}.png")
    folder = torchvision.datasets.ImageFolder(str(tmp_path))
    assert dataset_labels(folder) == [0, 0, 0, 1, 2, 2]
    assert spread_indices(folder, 5) == [0, 3, 4, 1, 5]  # a, b, c, then the second a and the second c
    subset = Subset(folder, [5, 4, 1, 0])  # a random validation split of the folder
    assert dataset_labels(subset) == [2, 2, 0, 0] and spread_indices(subset, 2) == [2, 0]

    class Unlabelled(Dataset):
        def __len__(self) -> int:
            return 10

        def __getitem__(self, index: int) -> int:
            raise AssertionError("no sample is loaded to choose the probe")

    assert dataset_labels(Unlabelled()) is None
    assert spread_indices(Unlabelled(), 4) == [0, 2, 5, 7]  # evenly over a dataset that names no labels


def test_at_32_px_the_default_views_stop_at_the_last_stage_of_at_least_4x4(tmp_path):
    # ResNet-18 at 32 px: conv1 16x16, layer1 8x8, layer2 4x4, layer3 2x2, layer4 1x1.
    cam, maps = GradCAM(num_images=4, **NO_NORMALISATION), FeatureMaps(num_images=1, **NO_NORMALISATION)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the defaults warn about nothing
        events = fit(tmp_path, resnet18(), [cam, maps], SortedGreys(per_class=2))
    images = set(events.Tags()["images"])
    assert cam.layer == "layer2" and "gradcam/layer2" in images
    assert maps.layers == ["conv1", "layer1", "layer2"]
    assert {f"feature_maps/image0/{k}_{name}" for k, name in enumerate(maps.layers, start=1)} <= images
    assert not any("layer3" in tag or "layer4" in tag for tag in images)


@pytest.mark.parametrize(("side", "layer"), [(16, "1"), (64, "3")])
def test_the_rule_follows_the_input_size(tmp_path, side, layer):
    cam, maps = GradCAM(num_images=1), FeatureMaps(num_images=1)
    events = fit(tmp_path, strided_cnn(), [cam, maps], SortedGreys(per_class=1, side=side))
    assert cam.layer == layer and maps.layers == ["0", "1", "2", "3"][: int(layer) + 1]
    assert f"gradcam/{layer}" in events.Tags()["images"]


@pytest.mark.parametrize("kind", [GradCAM, FeatureMaps])
def test_a_named_layer_of_1x1_warns_and_names_a_larger_one(tmp_path, kind):
    callback = GradCAM("3", num_images=2) if kind is GradCAM else FeatureMaps(["0", "3"], num_images=1)
    with pytest.warns(RuntimeWarning, match=r"layer '3' gives 1x1 maps at this input size.*e\.g\. '1'"):
        fit(tmp_path, strided_cnn(), [callback], SortedGreys(per_class=1, side=16))
