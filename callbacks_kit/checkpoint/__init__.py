"""Checkpoints: what a folder holds (`layout`), how state becomes JSON + safetensors (`codec`),
writing it crash-safely (`store`), and reading it back to resume exactly (`restore`).

`callbacks_kit.callbacks.ModelCheckpoint` decides when to save; this package does the saving.
"""

from callbacks_kit.errors import CheckpointError

__all__ = ["CheckpointError"]
