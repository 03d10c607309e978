"""Train on your own images: an ImageFolder tree, with the usual train/val transforms.

Your folder holds either `train/<class>/*.jpg` and `val/<class>/*.jpg`, or `<class>/*.jpg`
(then --val-split of it is held out for validation).

Run: python examples/image_folder.py --data path/to/folder
Try it without a dataset: python examples/image_folder.py --make-demo /tmp/demo --data /tmp/demo
"""

import argparse
from pathlib import Path

import torch
import torchvision

from callbacks_kit import TensorBoardLogger, Trainer, accuracy
from callbacks_kit.data import ShapesDataset, denormalize, image_folder_datasets, make_loader
from callbacks_kit.finetune import build_classifier

parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True, help="an ImageFolder tree")
parser.add_argument("--make-demo", metavar="DIR", help="first write a small demo tree of PNGs there")
parser.add_argument("--val-split", type=float, default=0.2)
parser.add_argument("--image-size", type=int, default=64)
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--log-dir", default="runs/image_folder")
args = parser.parse_args()

if args.make_demo:
    shapes = ShapesDataset(240, image_size=48, seed=5)
    for i in range(len(shapes)):
        image, label = shapes[i]
        folder = Path(args.make_demo) / shapes.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        torchvision.utils.save_image(denormalize(image), folder / f"{i:04d}.png")

# Train images get random crops and flips; validation images a resize and centre crop.
train_set, val_set, classes = image_folder_datasets(args.data, args.image_size, args.val_split, seed=0)
print(f"{len(train_set)} train / {len(val_set)} val images, classes: {classes}")
train_loader = make_loader(train_set, 32, shuffle=True, workers=2)  # workers decode images in parallel
val_loader = make_loader(val_set, 64, shuffle=False, workers=2)

torch.manual_seed(0)  # the same initial weights every run (Trainer(seed=) covers data order and dropout)
model = build_classifier("resnet18", num_classes=len(classes))
trainer = Trainer(
    model,
    torch.optim.AdamW(model.parameters(), lr=1e-3),
    torch.nn.CrossEntropyLoss(),
    metrics={"accuracy": accuracy},
    callbacks=[TensorBoardLogger(args.log_dir)],
    seed=0,
    log_every_n_steps=5,
)
metrics = trainer.fit(train_loader, val_loader, epochs=args.epochs).metrics
idx_to_class = dict(enumerate(classes))
images, labels = next(iter(val_loader))
with torch.no_grad():
    predicted = trainer.unwrapped_model.eval()(images.to(trainer.device)).argmax(1).tolist()
print(
    "first predictions:",
    [(idx_to_class[p], idx_to_class[t]) for p, t in zip(predicted[:5], labels[:5].tolist(), strict=True)],
)
print(f"val/accuracy {metrics['val/accuracy']:.3f}; tensorboard --logdir {args.log_dir}")
