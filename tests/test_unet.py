"""The package's U-Net: the segmentation job's default model, built by name, at any image size."""

from __future__ import annotations

import pytest
import torch

from callbacks_kit.errors import FinetuneError
from callbacks_kit.finetune import UNet, build_segmentation_model, freeze, head_name
from callbacks_kit.layers import spread_conv_blocks


@pytest.mark.parametrize("size", [(64, 64), (37, 50), (224, 160)])
def test_logits_have_the_input_size_even_when_pooling_floors_it(size: tuple[int, int]):
    model = UNet(5, width=8).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 5, *size)


def test_it_is_built_by_name_like_torchvision_models_and_laid_out_like_them():
    model = build_segmentation_model("unet", 7)
    assert isinstance(model, UNet) and model.classifier.out.out_channels == 7
    assert 1.8e6 < sum(p.numel() for p in model.parameters()) < 2.0e6
    assert head_name(model) == "classifier"  # the decoder is the head: --freeze-backbone freezes the encoder
    freeze(model.backbone)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    # The feature maps' default layers are modules that run (the stages, not the list holding them).
    assert spread_conv_blocks(model.backbone, 4) == ["stem", "stages.0", "stages.2", "stages.3"]
    with pytest.raises(FinetuneError, match="unet has no torchvision weight enum"):
        build_segmentation_model("unet", 7, weights="DEFAULT")
