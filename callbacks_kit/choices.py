"""What a user chooses among, and the defaults the help states, torch-free: the CLI's parser needs no torch.

Each name is used by the module named beside it, which re-exports it; `callbacks-kit --help`
and a mistyped choice come back before torch, torchvision or Accelerate are loaded.
"""

from __future__ import annotations

# data/transforms.py: no random transform, a random resized crop and flip, or one of
# torchvision's v2 policies after the crop and flip (as in torchvision's reference scripts).
AUGMENTS = ("none", "basic", "trivialaugment", "randaugment", "autoaugment")
# finetune/heads.py: the classifier head replacing a model's last layer.
HEADS = ("linear", "mlp")
# callbacks/ema.py: BatchNorm statistics of the averaged weights.
BUFFER_MODES = ("average", "recompute")
# deploy/export.py: the file formats of `callbacks-kit export`, and the largest difference
# of an export's logits from the PyTorch model's accepted by default.
EXPORT_FORMATS = ("state_dict", "torchscript", "pt2", "onnx")
EXPORT_TOLERANCE = 1e-4
# data/transforms.py: the share of the resized image that validation keeps (224 of 256, as
# torchvision's reference scripts and most of its ImageNet weights).
CROP_RATIO = 0.875
# deploy/run_info.py: what a run trains for.
TASKS = ("classification", "segmentation")
# losses.py: the segmentation losses by name (`SegmentationLoss`).
SEGMENTATION_LOSSES = ("ce", "dice", "bce-dice", "focal", "ce+dice")
# segmentation_metrics.py: the mask value counted in no loss or metric, the "void" label of
# PASCAL VOC and Cityscapes' trainIds (masks are 8-bit PNGs).
IGNORE_INDEX = 255
# finetune/segmentation_models.py: the package's small U-Net, which learns from scratch on a CPU.
DEFAULT_SEGMENTATION_MODEL = "unet"
