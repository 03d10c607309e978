"""Checkpoints: the names of folders and files (`format`), how state becomes JSON + safetensors
(`codec`) and the files of one save (`files`), writing them crash-safely (`store`, on a
background thread: `background`, `snapshot`), and reading them back to resume exactly (`restore`).

`callbacks_kit.callbacks.ModelCheckpoint` decides when to save and gathers the trainer's
state (`callbacks.checkpoint_state`); this package takes plain data and knows nothing of training.
"""

from callbacks_kit.errors import CheckpointError

__all__ = ["CheckpointError"]
