"""The confusion-matrix image: device counts equal a by-hand count; rendering with class names."""

import torch
from helpers.tiny import tiny_classification_data, tiny_mlp
from torch.utils.data import DataLoader

from callbacks_kit.callbacks.base import Callback
from callbacks_kit.callbacks.confusion_matrix import ConfusionMatrix
from callbacks_kit.callbacks.tensorboard_logger import TensorBoardLogger
from callbacks_kit.inspection.event_report import load
from callbacks_kit.state import TrainState
from callbacks_kit.trainer import Trainer


class ByHand(Callback):
    """Counts the same matrix from the gathered outputs, on the host."""

    def __init__(self):
        self.matrix = None

    def on_validation_start(self, trainer):
        self.matrix = torch.zeros(3, 3, dtype=torch.long)

    def on_validation_batch_end(self, trainer):
        for t, p in zip(trainer.last_targets.tolist(), trainer.last_outputs.argmax(1).tolist(), strict=True):
            self.matrix[t, p] += 1


def test_counts_and_image(tmp_path):
    model = tiny_mlp()
    confusion, by_hand = ConfusionMatrix(class_names=["ant", "bee", "cat"], every_n_validations=1), ByHand()
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        torch.nn.CrossEntropyLoss(),
        callbacks=[TensorBoardLogger(str(tmp_path), graph=False, summary=False), confusion, by_hand],
        progress_bar=False,
    )
    trainer.fit(
        DataLoader(tiny_classification_data(32), batch_size=8),
        DataLoader(tiny_classification_data(30, seed=1), batch_size=8),
        epochs=2,
    )
    assert torch.equal(confusion.counts[:-1].view(3, 3).cpu(), by_hand.matrix)
    assert int(confusion.counts.sum()) == 30 and int(confusion.counts[-1]) == 0
    events = load(tmp_path).Images("confusion_matrix/val")
    assert [e.step for e in events] == [4, 8]  # each validation
    assert events[-1].width > 3 * 56 and events[-1].height > 3 * 56


def test_render_many_classes_without_text_and_binary_logits():
    confusion = ConfusionMatrix(max_text_classes=10)
    image = confusion.render(torch.randint(0, 5, (40, 40)))
    assert image.shape[0] == 3 and image.shape[1] > 40 * 6

    class Fake:
        state = TrainState()  # validation_prefix "val"
        loss_fn = torch.nn.BCEWithLogitsLoss()
        is_main_process = True
        last_outputs = torch.tensor([[2.0], [-1.0], [0.5]])
        last_targets = torch.tensor([1, 1, 0])

    binary = ConfusionMatrix()
    binary.on_validation_batch_end(Fake())
    assert binary.counts[:-1].view(2, 2).tolist() == [[0, 1], [1, 1]]


def test_out_of_range_targets_are_ignored():
    class Fake:
        state = TrainState()  # validation_prefix "val"
        loss_fn = torch.nn.CrossEntropyLoss()
        is_main_process = True
        last_outputs = torch.eye(3)
        last_targets = torch.tensor([0, -100, 2])

    confusion = ConfusionMatrix()
    confusion.on_validation_batch_end(Fake())
    assert confusion.counts[:-1].view(3, 3).diag().tolist() == [1, 0, 1] and int(confusion.counts[-1]) == 1
