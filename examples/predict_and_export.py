"""After training: classify new images by class name, measure a test set, and ship the model.

Trains a small run on the built-in shapes (skip it with --run of your own), saves a few
shapes as PNG files in class folders, then uses the run from Python, as the `callbacks-kit
predict`, `evaluate` and `export` commands do:

    python examples/predict_and_export.py --out /tmp/after_training
    callbacks-kit predict /tmp/after_training/run /tmp/after_training/test --top-k 2
    callbacks-kit evaluate /tmp/after_training/run --data /tmp/after_training/test
    callbacks-kit export /tmp/after_training/run --format onnx
"""

import argparse
from pathlib import Path

import torch
import torchvision

from callbacks_kit import evaluate_run, export_run, load_run_model, predict
from callbacks_kit.cli import main as callbacks_kit
from callbacks_kit.data import ShapesDataset, denormalize

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="runs/after_training", help="folder for the run, the test images and exports")
parser.add_argument("--run", help="use this trained run instead of training one")
parser.add_argument("--formats", nargs="+", default=["state_dict", "torchscript", "onnx"], help="export formats")
parser.add_argument("--fast", action="store_true", help="a tiny run (for the smoke test)")
args = parser.parse_args()
out = Path(args.out)

# 1. A run: `callbacks-kit train` writes run.json (model, classes, input size, normalisation) next to checkpoints/.
run = Path(args.run) if args.run else out / "run"
if not args.run:
    size = ["--train-samples", "32", "--val-samples", "16", "--epochs", "1"] if args.fast else ["--epochs", "3"]
    code = callbacks_kit(
        ["train", *size, "--image-size", "32", "--no-progress", "--no-inspection", "--log-dir", str(run)]
    )
    assert code == 0, "training failed"

# 2. Test images as files, one folder per class (as users bring them).
test = out / "test"
shapes = ShapesDataset(12 if args.fast else 120, image_size=32, seed=99)
for i in range(len(shapes)):
    image, label = shapes[i]
    (test / shapes.classes[label]).mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(denormalize(image), test / shapes.classes[label] / f"{i:03d}.png")

# 3. Predict: class names and probabilities, with the run's own preprocessing.
result = predict(run, [test], top_k=2)
for p in result.predictions[:3]:
    print(f"{p.path}: {p.classes[0]} {p.probabilities[0]:.2f}, then {p.classes[1]} {p.probabilities[1]:.2f}")
right = sum(Path(p.path).parent.name == p.label for p in result.predictions)
print(f"predict: {right}/{len(result.predictions)} right")

# 4. Evaluate: loss, accuracy, per-class report and confusion matrix, also in TensorBoard under test/.
report = evaluate_run(run, test)
print(report.table())
assert report.accuracy == right / len(result.predictions)

# 5. Export, each file checked against the PyTorch model on a sample batch.
for fmt in args.formats:
    done = export_run(run, fmt, out / "export" / f"model.{fmt}", overwrite=True)
    print(f"export {fmt}: {done.path}, largest difference {done.max_abs_diff:.2g}")

# The plain state_dict needs nothing of callbacks_kit: torchvision's model for the run's classes.
model, info = load_run_model(run)
if "state_dict" in args.formats and info.head == "linear" and not info.model.startswith("timm/"):
    plain = torchvision.models.get_model(info.model, num_classes=info.num_classes)
    plain.load_state_dict(torch.load(out / "export" / "model.state_dict", weights_only=True))
    print(f"state_dict loads into torchvision.models.get_model({info.model!r}, num_classes={info.num_classes})")
