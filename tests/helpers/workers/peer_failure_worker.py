"""Worker for the peer-failure test: rank 1 leaves after the Trainer is built, rank 0 goes on to `fit`.

Rank 0's first collective (DDP's buffer broadcast in the sanity check's forward) then finds
its peer gone; what it reports must point at the other process, not at the model.
"""

import sys

import torch
from helpers.tiny import small_bn_cnn, tiny_image_data
from torch import nn
from torch.utils.data import DataLoader

from callbacks_kit import Trainer

model = small_bn_cnn()
trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), progress_bar=False)
if trainer.accelerator.process_index == 1:
    print("rank 1 leaves", flush=True)
    sys.exit(0)  # a clean exit: torchrun keeps waiting for rank 0 instead of killing it
trainer.fit(DataLoader(tiny_image_data(32), batch_size=8), epochs=1)
