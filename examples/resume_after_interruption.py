"""Resume after an interruption: a run stopped by SIGTERM continues bit-identically.

Three runs of the same training: one uninterrupted; one that receives a real SIGTERM (as a
cluster scheduler sends before preempting a job), finishes its step, saves and stops; and
one that resumes from the saved checkpoint. The final weights of the first and third are
compared bit for bit. Then the best model's weights are loaded for inference.

Run:  python examples/resume_after_interruption.py        (about a minute on a 2-core CPU)
"""

import argparse
import os
import signal
import tempfile

import torch
from torch import nn

from callbacks_kit import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    PreemptionHandler,
    ProgressBar,
    TerminateOnNaN,
    Trainer,
    accuracy,
)
from callbacks_kit.data import ShapesDataset, make_loader
from callbacks_kit.finetune import load_weights

parser = argparse.ArgumentParser()
parser.add_argument("--fast", action="store_true", help="tiny settings for a smoke test")
parser.add_argument("--dir", default=None, help="checkpoint folder (default: a new temporary one)")
args = parser.parse_args()
root = args.dir or tempfile.mkdtemp(prefix="resume-example-")
epochs = 2 if args.fast else 3

# Shuffled training data: the resumed run must see the rest of the epoch in the same order.
train_set = ShapesDataset(192 if args.fast else 800, image_size=32, seed=0)
val_set = ShapesDataset(64 if args.fast else 200, image_size=32, seed=1)
train_loader = make_loader(train_set, batch_size=32, shuffle=True, workers=0)
val_loader = make_loader(val_set, batch_size=64, shuffle=False, workers=0)


def small_cnn() -> nn.Module:
    # Dropout draws random numbers at every step: the resumed run must draw the same ones.
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Dropout(0.2), nn.Linear(64, len(ShapesDataset.classes)),
    )  # fmt: skip


class SendSigterm(Callback):
    """Plays the cluster scheduler: sends this process a real SIGTERM in the middle of epoch 2."""

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if trainer.state.epoch == 1 and trainer.state.batch_idx == 2:
            os.kill(os.getpid(), signal.SIGTERM)


def make_trainer(checkpoint_dir: str, *extra: Callback) -> Trainer:
    torch.manual_seed(0)  # the same initial weights in every run
    model = small_cnn()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    callbacks = [
        # Full training state at every epoch end; keeps the best by val/accuracy and the last.
        ModelCheckpoint(checkpoint_dir, monitor="val/accuracy", mode="max"),
        # Its counters are saved too, so a resumed run stops at the same epoch.
        EarlyStopping("val/accuracy", patience=3, mode="max"),
        # Stops before a NaN gradient reaches the weights (and the checkpoints).
        TerminateOnNaN(),
        # exit_after_save=False: fit returns instead of exiting, so this script can go on.
        PreemptionHandler(("SIGTERM", "SIGINT"), exit_after_save=False),
        ProgressBar(bar=False),  # one summary line per epoch
        *extra,
    ]
    metrics = {"accuracy": accuracy}
    return Trainer(model, optimizer, nn.CrossEntropyLoss(), metrics=metrics, callbacks=callbacks, seed=0)


# 1. The reference: never interrupted.
reference = make_trainer(os.path.join(root, "reference"))
reference.fit(train_loader, val_loader, epochs=epochs)

# 2. Interrupted: the SIGTERM arrives mid-epoch; the step finishes, a checkpoint is saved.
interrupted = make_trainer(os.path.join(root, "run"), SendSigterm())
interrupted.fit(train_loader, val_loader, epochs=epochs)
handler = interrupted.callbacks.find(PreemptionHandler)[0]
print(f"interrupted by {handler.signal_received} at step {interrupted.state.global_step}")

# 3. A fresh trainer (as a new process would build) resumes from the newest checkpoint of
#    its ModelCheckpoint folder: weights, optimizer, callbacks, position and RNG states.
torch.manual_seed(12345)  # whatever state this process is in does not matter
resumed = make_trainer(os.path.join(root, "run"))
resumed.fit(train_loader, val_loader, epochs=epochs, resume_from="last")

# 4. Bit for bit, not "close": torch.equal on every tensor.
ref_weights, new_weights = reference.unwrapped_model.state_dict(), resumed.unwrapped_model.state_dict()
identical = all(torch.equal(ref_weights[k], new_weights[k]) for k in ref_weights)
print(f"final weights bit-identical to the uninterrupted run: {identical}")

# 5. The best model's weights, exported as plain safetensors, load into a fresh model for inference.
checkpoint = resumed.callbacks.find(ModelCheckpoint)[0]
model = small_cnn()
load_weights(model, os.path.join(root, "run", "best.safetensors"), strict=True)
print(f"best checkpoint {checkpoint.best_name} ({checkpoint.best_k[checkpoint.best_name]:.3f} val/accuracy)")
print(f"checkpoints in {os.path.join(root, 'run')}: {sorted(os.listdir(os.path.join(root, 'run')))}")
if not identical:
    raise SystemExit("the resumed run differs from the uninterrupted one")
