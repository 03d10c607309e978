"""BatchGrid: the training batch the model received, un-normalised (pixels recovered), labelled, at its cadence."""

import io
import warnings

import numpy as np
import pytest
import torch
from helpers.tiny import tiny_classification_data, tiny_mlp
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks_kit import BatchGrid, Callback, TensorBoardLogger, Trainer, TrainerError
from callbacks_kit.inspection.event_report import load
from callbacks_kit.inspection.render import line_height

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def images(n: int = 12, size: int = 16) -> torch.Tensor:
    """Images whose pixels are exact multiples of 1/255, so the PNG holds them without rounding."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255


def fit(tmp_path, grid, dataset, model=None, epochs=1, log_every=100, callbacks=()):
    model = model or cnn()
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        nn.CrossEntropyLoss(),
        callbacks=[TensorBoardLogger(str(tmp_path), graph=False, summary=False), *callbacks, grid],
        log_every_n_steps=log_every,
        progress_bar=False,
    )
    trainer.fit(DataLoader(dataset, batch_size=4), epochs=epochs)
    return load(tmp_path)


def test_the_grid_undoes_the_normalisation(tmp_path):
    raw = images()
    normalised = (raw - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    dataset = TensorDataset(normalised, torch.tensor([2, 0, 1] * 4))
    acc = fit(tmp_path, BatchGrid(num_images=1, mean=MEAN, std=STD, tile_size=32, class_names=["a", "b", "c"]), dataset)
    (event,) = acc.Images("train_batch")
    assert event.step == 1  # written at the epoch end, at the step of the batch
    pixels = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
    caption = line_height(12) + 4
    tile = pixels[caption:]
    assert tile.shape == (32, 32, 3)  # 16 px enlarged twice, under a one-line caption
    recovered = tile[::2, ::2].transpose(2, 0, 1)  # nearest enlargement: every second pixel is the original
    assert np.abs(recovered.astype(int) - (raw[0] * 255).round().numpy().astype(int)).max() <= 1
    assert pixels[:caption].min() < 128  # the label is drawn in the strip


def test_soft_targets_show_their_two_most_likely_classes():
    grid = BatchGrid(class_names=["cat", "dog", "fox"])
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.1, 0.2, 0.7]])
    assert grid.captions(soft, 2) == ["cat 0.70 / dog 0.30", "fox 0.70 / dog 0.20"]
    assert grid.captions(torch.tensor([1, 5]), 2) == ["dog", "5"]


def test_it_shows_the_batch_a_callback_replaced(tmp_path):
    class Blackout(Callback):
        def on_before_forward(self, trainer):
            trainer.last_inputs = torch.zeros_like(trainer.last_inputs)

    dataset = TensorDataset(images(), torch.zeros(12, dtype=torch.long))
    acc = fit(tmp_path, BatchGrid(num_images=2, mean=None, std=None), dataset, callbacks=[Blackout()])
    pixels = np.asarray(Image.open(io.BytesIO(acc.Images("train_batch")[0].encoded_image_string)).convert("RGB"))
    caption = line_height(12) + 4
    assert (pixels[2 + caption : 2 + caption + 96, 2 : 2 + 96] == 128).all()  # constant images show mid-grey


def test_cadence_first_epoch_and_every_n(tmp_path):
    dataset = TensorDataset(images(), torch.zeros(12, dtype=torch.long))
    acc = fit(tmp_path / "a", BatchGrid(), dataset, epochs=3)
    assert [e.step for e in acc.Images("train_batch")] == [1]
    acc = fit(tmp_path / "b", BatchGrid(every_n_epochs=2), dataset, epochs=5, log_every=2)
    assert [e.step for e in acc.Images("train_batch")] == [1, 7, 13]  # epochs 0, 2, 4 (3 steps each)


def test_non_image_inputs_warn_once_and_write_nothing(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        acc = fit(tmp_path, BatchGrid(every_n_epochs=1), tiny_classification_data(8), model=tiny_mlp(), epochs=2)
    messages = [str(w.message) for w in caught if "BatchGrid" in str(w.message)]
    assert messages == ["BatchGrid: training inputs are (4, 8), not (N, C, H, W) images; no grid"]
    assert "train_batch" not in acc.Tags()["images"]
    with pytest.raises(TrainerError, match="every_n_epochs"):
        BatchGrid(every_n_epochs=0)
