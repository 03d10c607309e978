"""Mixed precision: bf16 autocast on a CPU; fp16 (with loss scaling) or bf16 on a GPU.

Run: python examples/mixed_precision.py [--precision bf16|fp16|no]
"""

import argparse
import time

import torch

from callbacks_kit import TensorBoardLogger, Trainer, accuracy
from callbacks_kit.data import ShapesDataset, make_loader
from callbacks_kit.finetune import build_classifier

parser = argparse.ArgumentParser()
parser.add_argument("--fast", action="store_true")
parser.add_argument("--precision", choices=["no", "fp16", "bf16"], default=None)
parser.add_argument("--log-dir", default="runs/mixed_precision")
args = parser.parse_args()

# fp16 needs a CUDA GPU (its gradients are scaled to avoid underflow); bf16 works on CPUs too.
precision = args.precision or ("fp16" if torch.cuda.is_available() else "bf16")
size, n = (32, 128) if args.fast else (64, 1200)
train_loader = make_loader(ShapesDataset(n, size, seed=0), 32, shuffle=True, workers=0)
val_loader = make_loader(ShapesDataset(n // 4, size, seed=1), 64, shuffle=False, workers=0)

torch.manual_seed(0)  # the same initial weights every run (Trainer(seed=) covers data order and dropout)
model = build_classifier("resnet18", num_classes=6)
trainer = Trainer(
    model,
    torch.optim.AdamW(model.parameters(), lr=1e-3),
    torch.nn.CrossEntropyLoss(),
    metrics={"accuracy": accuracy},
    callbacks=[TensorBoardLogger(f"{args.log_dir}/{precision}")],
    mixed_precision=precision,  # Accelerate autocasts the forward; weights stay float32
    max_grad_norm=1.0,  # clipping sees unscaled gradients, also under fp16
    seed=0,
    log_every_n_steps=5,
)
start = time.perf_counter()
metrics = trainer.fit(train_loader, val_loader, epochs=1 if args.fast else 2).metrics
trainer.print(
    f"{precision} on {trainer.device}: {time.perf_counter() - start:.1f} s, "
    f"val/accuracy {metrics['val/accuracy']:.3f}, weights dtype {next(model.parameters()).dtype}"
)
