"""Several GPUs (or two CPU processes) with Accelerate: the same script, a different launcher.

On 2 GPUs, with the config beside this file:
    accelerate launch --config_file examples/accelerate_config.yaml examples/multi_gpu.py
or without a config:
    accelerate launch --multi_gpu --num_processes 2 examples/multi_gpu.py
On a machine without GPUs, two gloo processes on the CPU:
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 examples/multi_gpu.py
(`accelerate launch --cpu --num_processes 2` starts only one process.)
"""

import argparse

import torch

from callbacks_kit import TensorBoardLogger, Trainer, accuracy
from callbacks_kit.data import ShapesDataset, make_loader
from callbacks_kit.finetune import build_classifier

parser = argparse.ArgumentParser()
parser.add_argument("--fast", action="store_true")
parser.add_argument("--log-dir", default="runs/multi_gpu")
args = parser.parse_args()

size, n = (32, 128) if args.fast else (64, 1200)
# Each process gets its own shard of every epoch: Accelerate wraps the sampler. batch_size is per process.
train_loader = make_loader(ShapesDataset(n, size, seed=0), 32, shuffle=True, workers=0)
val_loader = make_loader(ShapesDataset(n // 4 + 1, size, seed=1), 64, shuffle=False, workers=0)

# Same seed everywhere: identical initial weights (DDP also broadcasts rank 0's weights).
torch.manual_seed(0)
model = build_classifier("resnet18", num_classes=6)
trainer = Trainer(
    model,
    torch.optim.AdamW(model.parameters(), lr=1e-3),
    torch.nn.CrossEntropyLoss(),
    metrics={"accuracy": accuracy},  # validation gathers every process's outputs, each sample once
    callbacks=[TensorBoardLogger(args.log_dir)],  # only the main process creates the writer
    seed=0,
    log_every_n_steps=5,
)
metrics = trainer.fit(train_loader, val_loader, epochs=1 if args.fast else 2).metrics
# print() from the trainer runs on the main process only.
trainer.print(
    f"{trainer.accelerator.num_processes} process(es) on {trainer.device}: val/accuracy {metrics['val/accuracy']:.3f}"
)
