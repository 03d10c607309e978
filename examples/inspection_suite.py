"""The TensorBoard inspection suite on one run: what the network learned, and where it looks.

A small CNN learns the built-in shapes while these callbacks write into one event file:

    TensorBoardLogger  SCALARS (losses, accuracy, LR), GRAPHS (the traced model), TEXT (the
                       torchinfo summary), HPARAMS (settings with the final and best metrics)
    WeightHistograms   HISTOGRAMS / DISTRIBUTIONS: weights/<param> and grads/<param>
    KernelGrid         IMAGES kernels/<layer>: the convolution filters
    FeatureMaps        IMAGES feature_maps/image<i>/<k>_<layer>: activations, via forward hooks
    GradCAM            IMAGES gradcam/<layer>: heatmaps of where the predicted class came from
    ConfusionMatrix    IMAGES confusion_matrix/val: which shapes are mistaken for which

Run:  python examples/inspection_suite.py      (about a minute on a CPU)
Then: tensorboard --logdir runs/inspection
      or, without a browser: callbacks-kit inspect runs/inspection

Every image callback picks sensible layers by itself (the first conv, four stages spread
through the network, the last conv block); here they are named, to show how: a layer
name is its name in `model.named_modules()`. On a torchvision ResNet they would be
`conv1`, `layer1` ... `layer4`.
"""

import argparse

import torch
from torch import nn

from callbacks_kit import (
    ConfusionMatrix,
    FeatureMaps,
    GradCAM,
    KernelGrid,
    TensorBoardLogger,
    Trainer,
    WeightHistograms,
    accuracy,
)
from callbacks_kit.data import ShapesDataset, make_loader
from callbacks_kit.inspection.event_report import inspect_run

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=None, help="default 10 (1 with --fast)")
parser.add_argument("--lr", type=float, default=0.05)
parser.add_argument("--fast", action="store_true", help="tiny data, for a smoke test")
parser.add_argument("--log-dir", default="runs/inspection")
args = parser.parse_args()
epochs = args.epochs or (1 if args.fast else 10)
# 48 px: large enough that the last block's 6x6 map gives Grad-CAM some resolution.
size, n = 48, 96 if args.fast else 1500

train_set = ShapesDataset(n, size, seed=0)
val_set = ShapesDataset(n // 4, size, seed=1)  # the image callbacks probe its first samples
train_loader = make_loader(train_set, 32, shuffle=True, workers=0)
val_loader = make_loader(val_set, 64, shuffle=False, workers=0)


def conv_block(cin: int, cout: int, pool: bool = True) -> nn.Sequential:
    """Conv, BatchNorm, ReLU (and a 2x2 max-pool): index 0 is the conv, for KernelGrid."""
    layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Named stages, so the layers have readable names: stem, block1, block2, block3, head."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.stem = conv_block(3, 32)  # 48 -> 24 px
        self.block1 = conv_block(32, 64)  # -> 12 px
        self.block2 = conv_block(64, 128)  # -> 6 px
        self.block3 = conv_block(128, 128, pool=False)  # stays 6 px: Grad-CAM's target
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block3(self.block2(self.block1(self.stem(x)))))


torch.manual_seed(0)
model = SmallCNN(len(ShapesDataset.classes))
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
steps_per_epoch = len(train_loader)
log_dir = args.log_dir

callbacks = [
    # The run's one SummaryWriter. It also traces the graph and writes the torchinfo
    # summary at the start, and at the end the hparams: its own collected settings (lr,
    # batch_size, epochs, model...) plus these, next to the final and best metrics.
    TensorBoardLogger(log_dir, hparams={"image_size": size, "train_samples": n}),
    # About four histograms per epoch, plus the initial weights at step 0. Gradients are
    # read in on_after_backward: complete, before the optimizer step and zero_grad. They
    # are binned on the device, so only the bins are written.
    WeightHistograms(every_n_steps=max(1, steps_per_epoch // 4)),
    # stem.0 looks at RGB pixels: one colour tile per filter. block1.0 sees 32 channels:
    # one row per filter (the first 16), one grey tile per input channel (the first 8).
    KernelGrid(["stem.0", "block1.0"], max_kernels=16, max_channels=8),
    # Hooks go on for one extra forward over the first two validation images, in eval
    # mode, then come off again: training steps never pay for them.
    FeatureMaps(["stem", "block1", "block2", "block3"], num_images=2, max_channels=32),
    # Grad-CAM on the last conv block: the gradient of the predicted class's logit with
    # respect to block3's output, pooled into one weight per channel. The dataset's
    # `classes` name the labels in each tile's title.
    GradCAM("block3", num_images=8),
    # Counted on the device over the whole validation set at each validation.
    ConfusionMatrix(),
]
trainer = Trainer(
    model,
    optimizer,
    nn.CrossEntropyLoss(),
    metrics={"accuracy": accuracy},
    callbacks=callbacks,
    seed=0,
    log_every_n_steps=5,
    progress_bar=not args.fast,
)
trainer.fit(train_loader, val_loader, epochs=epochs)

# What the event files hold, read back with TensorBoard's own loader (as `callbacks-kit
# inspect` does): a check that needs no browser. The run folder holds the views; each
# split's scalars are in a sub-run, under the same tags (one chart, one colour per split).
runs = inspect_run(log_dir)["runs"]
report = runs["."]
for plugin in ("scalars", "histograms", "images", "text"):
    trainer.print(f"{plugin:>10}: {len(report[plugin])} tags, e.g. {', '.join(list(report[plugin])[:3])}")
for split in ("train", "validation"):
    trainer.print(f"{split:>10}: scalars {', '.join(runs[split]['scalars'])}")
trainer.print(f"{'graph':>10}: {report['graphs'].get('nodes', 0)} nodes")
# The hparams plugin stores every number as a float: 32 comes back as 32.0.
hparams = report["hparams"].get("hparams", {})
shown = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(hparams.items())]
trainer.print(f"{'hparams':>10}: {', '.join(shown)}")
metrics = trainer.state.metrics
trainer.print(f"val/accuracy {metrics['val/accuracy']:.3f}, val/loss {metrics['val/loss']:.3f}")
trainer.print(f"open the run: tensorboard --logdir {log_dir}")
