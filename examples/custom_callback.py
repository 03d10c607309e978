"""Write your own callback: activation statistics through forward hooks that remove themselves.

Every `every_n_steps` optimizer steps, the callback hooks the model's ReLU and conv layers for
one forward pass, keeps the mean and std of each output on the device, removes the hooks,
and writes the numbers to TensorBoard with a single host read.

Run: python examples/custom_callback.py && tensorboard --logdir runs/custom_callback
"""

import argparse

import torch
from torch import nn

from callbacks_kit import ActivationCapture, Callback, Order, TensorBoardLogger, Trainer, accuracy
from callbacks_kit.data import ShapesDataset, make_loader
from callbacks_kit.finetune import build_classifier
from callbacks_kit.hooks import hooked_modules

parser = argparse.ArgumentParser()
parser.add_argument("--fast", action="store_true")
parser.add_argument("--log-dir", default="runs/custom_callback")
args = parser.parse_args()


class ActivationStats(Callback):
    """Logs `activations/<layer>/mean` and `/std` every `every_n_steps` optimizer steps."""

    order = Order.INSPECT  # after TensorBoardLogger (Order.WRITER) has created the writer

    def __init__(self, every_n_steps: int = 20, kinds: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.ReLU)) -> None:
        self.every_n_steps = every_n_steps
        self.kinds = kinds
        self.capture: ActivationCapture | None = None

    def on_train_batch_start(self, trainer: Trainer) -> None:
        # Hook only the forward of the batch that will be measured: other steps pay nothing.
        if trainer.tb_writer is None or trainer.state.global_step % self.every_n_steps:
            return
        model = trainer.unwrapped_model  # hooks go on the bare module, never on a DDP wrapper
        names = [name for name, module in model.named_modules() if isinstance(module, self.kinds)]
        self.capture = ActivationCapture(model, names).attach()

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if self.capture is None:
            return
        self.capture.remove()
        outputs, self.capture = self.capture.outputs, None
        # Mean and std of each layer stay on the device until the one host read (.tolist()).
        values = torch.stack([torch.stack([out.float().mean(), out.float().std()]) for out in outputs.values()])
        for name, (mean, std) in zip(outputs, values.tolist(), strict=True):
            trainer.tb_writer.add_scalar(f"activations/{name}/mean", mean, trainer.state.global_step)
            trainer.tb_writer.add_scalar(f"activations/{name}/std", std, trainer.state.global_step)

    def on_teardown(self, trainer: Trainer) -> None:
        if self.capture is not None:
            self.capture.remove()  # never leave a hook on the user's model, even after a failure


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
    callbacks=[TensorBoardLogger(args.log_dir), ActivationStats(every_n_steps=2 if args.fast else 20)],
    seed=0,
)
trainer.fit(train_loader, val_loader, epochs=1 if args.fast else 2)
left = len(hooked_modules(model))
trainer.print(f"hooks left on the model: {left}; open: tensorboard --logdir {args.log_dir}")
