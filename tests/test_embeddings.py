"""Embeddings: the head's input features of the first M validation samples, with labels, predictions and sprites."""

from pathlib import Path

import pytest
import torch
from helpers.tiny import small_bn_cnn, tiny_classification_data, tiny_mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks_kit import Embeddings, LayerNotFoundError, TensorBoardLogger, Trainer, TrainerError


def images(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 3, (n,), generator=g))


def fit(model, embeddings, val, log_dir: Path, epochs: int = 1) -> Trainer:
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.CrossEntropyLoss(),
        callbacks=[TensorBoardLogger(str(log_dir), graph=False, summary=False), embeddings],
        progress_bar=False,
    )
    train = images(16, 0) if isinstance(val[0][0], torch.Tensor) and val[0][0].ndim == 3 else val
    trainer.fit(DataLoader(train, batch_size=8), DataLoader(val, batch_size=8), epochs=epochs)
    return trainer


def projector_folders(log_dir: Path) -> list[Path]:
    return sorted(p.parent for p in log_dir.rglob("tensors.tsv"))


def test_features_labels_predictions_and_sprite(tmp_path):
    val = images(20, 1)
    trainer = fit(small_bn_cnn(), Embeddings(num_samples=12, thumbnail_size=8, batch_size=5), val, tmp_path, epochs=2)
    (folder,) = projector_folders(tmp_path)  # written once, at the end of fit
    rows = [[float(v) for v in line.split("\t")] for line in (folder / "tensors.tsv").read_text().splitlines()]
    model = trainer.unwrapped_model.eval()
    with torch.no_grad():
        expected = model.pool(model.block(model.stem(val.tensors[0][:12])))  # the input of the head
        predicted = model(val.tensors[0][:12]).argmax(1)
    assert torch.allclose(torch.tensor(rows), expected, atol=1e-4)
    metadata = (folder / "metadata.tsv").read_text().splitlines()
    assert metadata[0] == "label\tpredicted" and len(metadata) == 13
    assert metadata[1:] == [f"{int(t)}\t{int(p)}" for t, p in zip(val.tensors[1][:12], predicted, strict=True)]
    assert (folder / "sprite.png").stat().st_size > 0
    config = (tmp_path / "projector_config.pbtxt").read_text()
    assert "embeddings/val" in config and "sprite" in config


def test_every_n_epochs_and_features_that_are_not_images(tmp_path):
    val = tiny_classification_data(10, seed=1)
    with pytest.warns(RuntimeWarning, match="num_samples=50 but the validation set has 10 samples"):
        fit(tiny_mlp(), Embeddings(num_samples=50, every_n_epochs=1), val, tmp_path, epochs=2)
    folders = projector_folders(tmp_path)
    assert len(folders) == 2  # epochs 1 and 2; fit end is the same step, not written twice
    assert len((folders[-1] / "tensors.tsv").read_text().splitlines()) == 10
    assert not (folders[-1] / "sprite.png").exists()


def test_bad_layer_or_no_head_is_refused_before_training(tmp_path):
    val = images(8, 1)
    with pytest.raises(LayerNotFoundError):
        fit(small_bn_cnn(), Embeddings(layer="hed"), val, tmp_path)
    convolutional = nn.Sequential(nn.Conv2d(3, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(TrainerError, match="has no nn.Linear head"):
        fit(convolutional, Embeddings(), val, tmp_path)
    with pytest.raises(TrainerError, match="num_samples and batch_size must be at least 1"):
        Embeddings(num_samples=0)
