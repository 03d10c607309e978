"""Segmentation views read back with TensorBoard's loader: overlays covering the classes, the true worst images,
the pixel confusion matrix and the per-class report with its absent class; no device read per batch; bad input
refused before training."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.tiny import TinySegmenter, tiny_classification_data, tiny_mlp
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader

from benchmarks.sync_counter import HostSyncCounter
from callbacks_kit import Callback, TensorBoardLogger, Trainer, TrainerError
from callbacks_kit.callbacks import PixelConfusionMatrix, SegmentationOverlays, SegmentationReport, WorstSegmentations
from callbacks_kit.data import ShapesDataset
from callbacks_kit.inspection.segmentation import covering_samples
from callbacks_kit.inspection.segmentation_image import overlay_rows, palette
from callbacks_kit.losses import SegmentationLoss
from callbacks_kit.segmentation_metrics import PixelCounts, SegmentationMetrics, image_iou, image_overlaps

NAMES = [*ShapesDataset(1, 16, task="segmentation").classes, "absent"]


class WithAbsentClass(nn.Module):
    """The tiny segmenter plus an eighth class no mask holds and the model never predicts."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinySegmenter(7)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(images)["out"]
        return {"out": torch.cat([logits, torch.full_like(logits[:, :1], -100.0)], dim=1)}


def trainer_with(callbacks: list[Callback], log_dir: Path | None = None, model: nn.Module | None = None) -> Trainer:
    model = model or WithAbsentClass()
    logger = [TensorBoardLogger(str(log_dir), graph=False, summary=False)] if log_dir is not None else []
    return Trainer(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        SegmentationLoss("ce+dice"),
        metrics=SegmentationMetrics(class_names=NAMES).metrics(),
        callbacks=[*logger, *callbacks],
        progress_bar=False,
        seed=0,
    )


VAL = ShapesDataset(21, 16, seed=1, task="segmentation")  # 21: an uneven last batch


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, dict[str, Callback], EventAccumulator]:
    log_dir = tmp_path_factory.mktemp("segviews")
    views = {
        "overlays": SegmentationOverlays(num_images=4, class_names=NAMES),
        "worst": WorstSegmentations(k=3, class_names=NAMES),
        "confusion": PixelConfusionMatrix(class_names=NAMES),
        "report": SegmentationReport(),  # its names: the dataset's 7 do not fit the 8 outputs, so indices
    }
    trainer = trainer_with(list(views.values()), log_dir)
    train = DataLoader(ShapesDataset(32, 16, task="segmentation"), batch_size=8, shuffle=True)
    trainer.fit(train, DataLoader(VAL, batch_size=8), epochs=2)
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "tensors": 0, "scalars": 0}).Reload()
    return trainer, views, events


def decoded(events: EventAccumulator, tag: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(events.Images(tag)[-1].encoded_image_string)))


def text(events: EventAccumulator, tag: str) -> str:
    return events.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()


@torch.no_grad()
def final_predictions(trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    images, masks = next(iter(DataLoader(VAL, batch_size=len(VAL))))
    return trainer.unwrapped_model.eval()(images)["out"].argmax(1), masks


def test_every_view_is_in_tensorboard_at_each_validation(run):
    trainer, _, events = run
    steps = [event.step for event in events.Images("segmentation/overlays")]
    assert len(steps) == 2 and steps[-1] == trainer.state.global_step
    for tag in ("segmentation/worst/val", "segmentation/confusion_matrix/val"):
        assert len(events.Images(tag)) == 2
    assert {"segmentation_report/val/text_summary", "segmentation/worst/val/text_summary"} <= set(
        events.Tags()["tensors"]
    )
    assert "val_best/mean_iou" in events.Tags()["scalars"]
    validation = EventAccumulator(str(Path(events.path) / "validation")).Reload()  # a split's sub-run, same tag
    assert {"mean_iou", "pixel_accuracy", "iou/circle", "dice/ring"} <= set(validation.Tags()["scalars"])


def test_the_overlay_grid_shows_fixed_images_covering_the_classes(run):
    _, views, events = run
    overlays = views["overlays"]
    assert overlays.indices == covering_samples(VAL, 4, len(NAMES))
    shown = set()
    for index in overlays.indices:
        shown |= set(VAL[index][1].unique().tolist())
    every = set(torch.cat([VAL[i][1].flatten() for i in range(len(VAL))]).unique().tolist())
    assert shown == every  # 4 images show every class of the validation set
    grid = decoded(events, "segmentation/overlays")
    tile = 128  # 16 px tiles enlarged to the tile size
    assert grid.shape[1] == 4 * tile + 5 * 4 and grid.shape[0] > 4 * tile  # 4 columns, 4 rows, header and legend
    # The truth column is the image blended with the palette: not the image column itself.
    assert not np.array_equal(grid[40:100, 4 : 4 + tile], grid[40:100, 8 + tile : 8 + 2 * tile])


def test_a_class_shows_its_legend_colour_whatever_colour_is_under_it():
    masks = torch.ones(2, 8, 8, dtype=torch.long)  # class 1 everywhere
    images = torch.zeros(2, 3, 8, 8)
    images[0, 0], images[1, 1] = 0.9, 0.9  # a red and a green image of the same brightness
    tiles = overlay_rows(images, masks, masks, ignore_index=None)
    truth, predicted = tiles[:, 1], tiles[:, 2]
    assert torch.allclose(truth[0], truth[1]) and torch.allclose(predicted[0], predicted[1])
    colour = palette()[1].float() / 255
    assert int(truth[0, :, 0, 0].argmax()) == int(colour.argmax())  # the class's hue: blue, as in the legend


def test_the_worst_images_are_the_lowest_iou_ones(run):
    trainer, views, events = run
    predicted, masks = final_predictions(trainer)
    scores = image_iou(*image_overlaps(predicted, masks, len(NAMES), 255))
    expected = sorted(range(len(VAL)), key=lambda i: (float(scores[i]), i))[:3]
    worst = views["worst"]
    assert worst.positions is not None and worst.positions.tolist() == expected
    assert worst.scores is not None and worst.scores.tolist() == pytest.approx([float(scores[i]) for i in expected])
    table = text(events, "segmentation/worst/val")
    assert f"| 1 | {expected[0]} | {float(scores[expected[0]]):.3f} |" in table


def test_the_confusion_matrix_and_report_count_every_pixel_and_mark_the_absent_class(run):
    trainer, views, events = run
    predicted, masks = final_predictions(trainer)
    counts = PixelCounts(len(NAMES))
    counts.add(predicted, masks)
    assert torch.equal(views["confusion"].matrix, counts.read()[0])
    report = text(events, "segmentation_report/val")
    assert "| 7 | – | – | 0 | 0 | *absent*: not in the truth nor predicted" in report
    scores = views["report"].scores
    assert f"**mean IoU {scores.mean_iou:.3f}**" in report and "over 7 of 8 classes" in report
    assert scores.mean_iou == pytest.approx(trainer.state.metrics["val/mean_iou"])
    image = decoded(events, "segmentation/confusion_matrix/val")
    assert image.shape[0] > 100 and image.shape[1] > 100


def test_validation_batches_read_nothing_from_the_device():
    class Marks(Callback):
        order = 10**6  # after the views

        def __init__(self, counter: HostSyncCounter) -> None:
            self.counter, self.per_batch = counter, []

        def on_validation_start(self, trainer: Trainer) -> None:
            self.start = len(self.counter.events)

        def on_validation_batch_end(self, trainer: Trainer) -> None:
            self.per_batch.append(len(self.counter.events) - self.start)

    counter = HostSyncCounter()
    marks = Marks(counter)
    trainer = trainer_with([WorstSegmentations(k=2), PixelConfusionMatrix(), SegmentationReport(), marks])
    with counter:
        trainer.evaluate(DataLoader(VAL, batch_size=8))
    assert marks.per_batch == [0, 0, 0], counter.events


@pytest.mark.parametrize("view", [SegmentationOverlays, WorstSegmentations, PixelConfusionMatrix, SegmentationReport])
def test_bad_input_is_refused_before_training(view):
    data = tiny_classification_data(16)
    model = tiny_mlp()
    start = [p.detach().clone() for p in model.parameters()]
    classifier = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), callbacks=[view()],
                         progress_bar=False)  # fmt: skip
    with pytest.raises(TrainerError, match=r"Segmentation views need a model that returns \(N, C, H, W\) logits"):
        classifier.fit(DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    assert all(torch.equal(a, b) for a, b in zip(start, model.parameters(), strict=True))  # no step was taken
    segmenter = trainer_with([view(class_names=["a", "b"])])
    with pytest.raises(TrainerError, match="2 class_names for a model with 8 classes"):
        segmenter.fit(DataLoader(VAL, batch_size=8), DataLoader(VAL, batch_size=8))
