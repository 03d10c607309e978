"""Run by test_finetuning_callback.py in two gloo processes: freeze, then unfreeze, under DDP.

Mode "after": the callback freezes after `prepare()` (DDP's reducer still holds the frozen
parameters). Mode "before": the user froze them before the Trainer existed (DDP left them
out). Either way: no crash, frozen weights bit-identical while frozen, every weight
trained in the end, and the two replicas identical. Prints one OK line per mode.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from helpers.tiny import small_bn_cnn
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks_kit import Callback, FreezeUnfreeze, Trainer
from callbacks_kit.finetune import freeze


class Snapshots(Callback):
    """The model's state (parameters and BatchNorm statistics) at each epoch end."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.states.append({k: v.detach().clone() for k, v in trainer.unwrapped_model.state_dict().items()})


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))


def run(mode: str) -> None:
    model = small_bn_cnn()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    if mode == "before":
        freeze([model.stem, model.block])
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 3, (32,), generator=g))
    snapshots = Snapshots()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    callback = FreezeUnfreeze(["stem", "block"], unfreeze_at=[1, 2])
    trainer = Trainer(model, optimizer, nn.CrossEntropyLoss(), callbacks=[callback, snapshots], progress_bar=False)
    trainer.fit(DataLoader(data, batch_size=4, shuffle=True), epochs=3)
    first, second, last = snapshots.states
    assert same(first, initial, "stem") and same(first, initial, "block"), "frozen weights moved in epoch 0"
    assert not same(first, initial, "head"), "the head did not train"
    assert same(second, initial, "stem") and not same(second, initial, "block"), "epoch 1: only block unfrozen"
    assert not same(last, second, "stem"), "stem did not train after unfreezing"
    # Parameters only: BatchNorm statistics of the last forward are each replica's own until
    # DDP broadcasts process 0's at the next forward.
    flat = torch.cat([p.detach().flatten().double() for p in trainer.unwrapped_model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    assert all(torch.equal(gathered[0], other) for other in gathered[1:]), "replicas diverged"
    print(f"rank {dist.get_rank()} mode {mode}: OK", flush=True)


if __name__ == "__main__":
    for mode in sys.argv[1:] or ["after", "before"]:
        run(mode)
