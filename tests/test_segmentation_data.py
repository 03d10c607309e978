"""Segmentation data: the folder layout, its errors before any training, and transforms that move masks with images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.images import write_segmentation_split
from PIL import Image
from torchvision import tv_tensors

from callbacks_kit.data import (
    PairTransformed,
    SegmentationFolder,
    ShapesDataset,
    read_mask,
    segmentation_augmentation,
    segmentation_folder_datasets,
    segmentation_train_transform,
)
from callbacks_kit.errors import DataError


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("segdata")
    write_segmentation_split(root / "train", 6, seed=0, ignore_border=True)
    write_segmentation_split(root / "val", 4, seed=1)
    return root


def copy_tree(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def test_pairs_classes_and_presence_are_read_from_the_folders(data_root: Path):
    train, val, classes = segmentation_folder_datasets(data_root, image_size=16, augment="none")
    assert len(train) == 6 and len(val) == 4
    # No classes.txt: class0.. up to the largest value either split holds, 255 (ignored) aside.
    largest = max(int(np.setdiff1d(read_mask(m), [255]).max()) for _, m in train.samples + val.samples)
    assert classes == [f"class{i}" for i in range(largest + 1)] and train.classes == val.classes == classes
    image, mask = train[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and mask.shape == (16, 16)
    assert mask.dtype == torch.long and set(mask.unique().tolist()) <= {*range(len(classes)), 255}
    expected = [np.isin(np.arange(len(classes)), np.unique(read_mask(m))) for _, m in val.samples]
    assert (val.class_presence == np.stack(expected)).all()


def test_classes_txt_names_the_classes_and_bounds_the_values(data_root: Path, tmp_path: Path):
    root = copy_tree(data_root, tmp_path / "named")
    names = ["background", "circle", "square", "triangle", "cross", "star", "ring"]
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    assert segmentation_folder_datasets(root, image_size=16)[2] == names
    (root / "classes.txt").write_text("background\ncircle\n")
    with pytest.raises(DataError, match=r"holds value\(s\) .*but there are 2 classes \(0..1, from classes.txt\)"):
        segmentation_folder_datasets(root, image_size=16)
    (root / "classes.txt").write_text("background\n\ncircle\n")
    with pytest.raises(DataError, match="line 2 is empty"):
        segmentation_folder_datasets(root, image_size=16)


def test_each_problem_of_the_folder_is_refused_naming_the_file(data_root: Path, tmp_path: Path):
    root = copy_tree(data_root, tmp_path / "bad")
    (root / "train" / "masks" / "002.png").unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) of .*train/images have no mask .*: 002.png"):
        segmentation_folder_datasets(root, image_size=16)
    Image.new("L", (10, 12)).save(root / "train" / "masks" / "002.png")
    with pytest.raises(DataError, match=r"mask .*002.png is 10x12 but its image 002.png is 24x24"):
        segmentation_folder_datasets(root, image_size=16)
    Image.new("RGB", (24, 24)).save(root / "train" / "masks" / "002.png")
    with pytest.raises(DataError, match=r"mode RGB image; masks are single-channel index PNGs \(mode L or P\)"):
        segmentation_folder_datasets(root, image_size=16)
    for path in (root / "val" / "images").iterdir():
        path.unlink()
    with pytest.raises(DataError, match=r"val/images holds no image: the split is empty"):
        SegmentationFolder(root / "val")
    with pytest.raises(DataError, match=r"has no train/ folder \(images/ and masks/ go inside train/ and val/\)"):
        segmentation_folder_datasets(root / "train", image_size=16)


def test_a_mask_value_above_the_classes_and_an_ignore_index_inside_them(data_root: Path, tmp_path: Path):
    root = copy_tree(data_root, tmp_path / "values")
    mask = read_mask(root / "val" / "masks" / "001.png").copy()
    mask[0, 0] = 200  # neither one of the 7 classes nor the ignore index
    Image.fromarray(mask).save(root / "val" / "masks" / "001.png")
    (root / "classes.txt").write_text("\n".join(f"c{i}" for i in range(7)))
    with pytest.raises(DataError, match=r"001.png holds value\(s\) 200.*the ignore index is 255.*--ignore-index"):
        segmentation_folder_datasets(root, image_size=16)
    names = [f"c{i}" for i in range(7)]
    assert len(SegmentationFolder(root / "val", names, ignore_index=200)) == 4  # 200 now marks pixels to ignore
    with pytest.raises(DataError, match=r"000.png holds value\(s\) 255.*the ignore index is 200"):
        segmentation_folder_datasets(root, image_size=16, ignore_index=200)  # the training masks' 255 border
    with pytest.raises(DataError, match=r"the ignore index 3 is class 3 \('c3'\)"):
        segmentation_folder_datasets(root, image_size=16, ignore_index=3)


def test_a_palette_mask_gives_its_indices_not_its_colours(tmp_path: Path):
    write_segmentation_split(tmp_path / "split", 1)
    path = tmp_path / "split" / "masks" / "000.png"
    values = read_mask(path)
    indexed = Image.frombytes("P", (values.shape[1], values.shape[0]), values.tobytes())
    indexed.putpalette([255, 0, 0] * 256)  # every index the same colour: only the indices tell classes apart
    indexed.save(path)
    assert (read_mask(path) == values).all()


def test_crop_and_flip_move_the_mask_with_the_image():
    # The image's red channel holds the class of each pixel: a joint transform keeps them equal.
    g = torch.Generator().manual_seed(0)
    classes = torch.randint(0, 5, (5, 5), generator=g).repeat_interleave(8, 0).repeat_interleave(8, 1)  # 8 px blocks
    image = tv_tensors.Image((classes * 50).to(torch.uint8).expand(3, -1, -1).clone())
    transform = segmentation_train_transform(24, "basic")
    for seed in range(5):
        torch.manual_seed(seed)
        out_image, out_mask = transform(image, tv_tensors.Mask(classes))
        red = out_image[0] * 0.229 + 0.485  # undo the normalisation
        assert out_mask.shape == (24, 24) and set(out_mask.unique().tolist()) <= set(range(5))  # nearest: no new values
        # Where the image is not blended across a class border, its value is the mask's class.
        agree = ((red * 255 / 50).round().long() == out_mask).float().mean()
        assert agree > 0.8  # a mask cropped or flipped apart from its image agrees on about a fifth


class MaskAsImage(torch.utils.data.Dataset):
    """The shapes' masks, each also as its image (every channel holds the class): what moves where is visible."""

    def __init__(self) -> None:
        self.shapes = ShapesDataset(4, 32, task="segmentation")

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.shapes[index][1]
        return mask.float().expand(3, -1, -1).clone(), mask


def test_the_shapes_masks_are_augmented_with_their_images():
    assert ShapesDataset(4, 32, task="segmentation").classes == (
        "background", "circle", "square", "triangle", "cross", "star", "ring"
    )  # fmt: skip
    augment = segmentation_augmentation(32, "basic")
    assert augment is not None
    pairs = PairTransformed(MaskAsImage(), augment)
    for seed in range(4):
        torch.manual_seed(seed)
        image, mask = pairs[seed]
        assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and mask.dtype == torch.long
        assert (image[0].round().long() == mask).float().mean() > 0.9  # blended only along the shapes' edges
    with pytest.raises(DataError, match="torchvision's policies such as TrivialAugment transform the image only"):
        segmentation_train_transform(32, "trivialaugment")
