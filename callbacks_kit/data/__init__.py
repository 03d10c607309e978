"""Data: the built-in shapes dataset, ImageFolder and CSV loading, transforms, image files and loaders.

One module per job: `normalization` (ImageNet mean and std), `shapes`, `transforms`,
`images` (image files), `folders` (ImageFolder trees), `csv_labels` (images labelled by a
CSV), `segmentation` (image and mask pairs), `wrappers` (looking through `Subset`s) and
`loaders`. Every public name is also here,
imported on first use (PEP 562): importing `callbacks_kit.data.normalization` runs this
file first, and the callbacks that only need the ImageNet mean and std must not pull in
PIL and torchvision's datasets through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from callbacks_kit.exports import lazy_exports

if TYPE_CHECKING:
    from callbacks_kit.data.csv_labels import (
        SPLIT_COLUMN,
        SPLIT_NAMES,
        CsvImageDataset,
        LabelTable,
        csv_datasets,
        read_labels,
    )
    from callbacks_kit.data.folders import PROGRESS_FROM, CheckedImageFolder, drop_unreadable, image_folder_datasets
    from callbacks_kit.data.images import (
        check_image,
        expand_images,
        is_image_name,
        load_image,
        read_image,
        typical_side,
    )
    from callbacks_kit.data.loaders import default_workers, make_loader, pin_by_default
    from callbacks_kit.data.normalization import IMAGENET_MEAN, IMAGENET_STD, denormalize
    from callbacks_kit.data.segmentation import (
        CLASSES_FILE,
        SEGMENTATION_AUGMENTS,
        PairTransformed,
        SegmentationFolder,
        read_class_names,
        read_mask,
        segmentation_augmentation,
        segmentation_eval_transform,
        segmentation_folder_datasets,
        segmentation_train_transform,
    )
    from callbacks_kit.data.shapes import SHAPES, ShapesDataset
    from callbacks_kit.data.transforms import (
        AUGMENTS,
        POLICIES,
        augmentation,
        eval_resize,
        eval_transform,
        train_transform,
    )
    from callbacks_kit.data.wrappers import base_dataset, class_names, dataset_labels

# Public name -> the module of this package that defines it.
_HOMES: dict[str, str] = {
    "IMAGENET_MEAN": "normalization",
    "IMAGENET_STD": "normalization",
    "denormalize": "normalization",
    "SHAPES": "shapes",
    "ShapesDataset": "shapes",
    "AUGMENTS": "transforms",
    "POLICIES": "transforms",
    "augmentation": "transforms",
    "train_transform": "transforms",
    "eval_transform": "transforms",
    "eval_resize": "transforms",
    "load_image": "images",
    "check_image": "images",
    "is_image_name": "images",
    "expand_images": "images",
    "read_image": "images",
    "typical_side": "images",
    "PROGRESS_FROM": "folders",
    "image_folder_datasets": "folders",
    "drop_unreadable": "folders",
    "CheckedImageFolder": "folders",
    "SPLIT_COLUMN": "csv_labels",
    "SPLIT_NAMES": "csv_labels",
    "LabelTable": "csv_labels",
    "read_labels": "csv_labels",
    "CsvImageDataset": "csv_labels",
    "csv_datasets": "csv_labels",
    "base_dataset": "wrappers",
    "class_names": "wrappers",
    "dataset_labels": "wrappers",
    "default_workers": "loaders",
    "pin_by_default": "loaders",
    "make_loader": "loaders",
    "CLASSES_FILE": "segmentation",
    "SEGMENTATION_AUGMENTS": "segmentation",
    "PairTransformed": "segmentation",
    "SegmentationFolder": "segmentation",
    "read_class_names": "segmentation",
    "read_mask": "segmentation",
    "segmentation_augmentation": "segmentation",
    "segmentation_eval_transform": "segmentation",
    "segmentation_folder_datasets": "segmentation",
    "segmentation_train_transform": "segmentation",
}

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "denormalize",
    "SHAPES",
    "ShapesDataset",
    "AUGMENTS",
    "POLICIES",
    "augmentation",
    "train_transform",
    "eval_transform",
    "eval_resize",
    "load_image",
    "check_image",
    "is_image_name",
    "expand_images",
    "read_image",
    "typical_side",
    "PROGRESS_FROM",
    "image_folder_datasets",
    "drop_unreadable",
    "CheckedImageFolder",
    "SPLIT_COLUMN",
    "SPLIT_NAMES",
    "LabelTable",
    "read_labels",
    "CsvImageDataset",
    "csv_datasets",
    "base_dataset",
    "class_names",
    "dataset_labels",
    "default_workers",
    "pin_by_default",
    "make_loader",
    "CLASSES_FILE",
    "SEGMENTATION_AUGMENTS",
    "PairTransformed",
    "SegmentationFolder",
    "read_class_names",
    "read_mask",
    "segmentation_augmentation",
    "segmentation_eval_transform",
    "segmentation_folder_datasets",
    "segmentation_train_transform",
]


__getattr__, __dir__ = lazy_exports(__name__, _HOMES, __all__)
