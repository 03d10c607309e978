"""CSV-labelled images: `CsvImageDataset`, `--labels/--images`, and the bad CSVs a user brings."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from helpers.images import write_image_folder
from torchvision.datasets import ImageFolder

from callbacks_kit.cli import build_parser, main
from callbacks_kit.cli.train import train
from callbacks_kit.data.csv_labels import CsvImageDataset, csv_datasets
from callbacks_kit.errors import DataError

RUN = ["--epochs", "1", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--no-progress", "--no-inspection"]


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_csv_trains_exactly_as_the_same_image_folder(tmp_path: Path):
    data = tmp_path / "data"
    write_image_folder(data, per_class=2)
    rows = []
    for split in ("train", "val"):  # the ImageFolder's own order, so both loaders see the same sequence
        folder = ImageFolder(str(data / split))
        for path, target in folder.samples:
            rows.append({"file": str(Path(path).relative_to(data)), "label": folder.classes[target], "split": split})
    labels = write_csv(tmp_path / "labels.csv", rows)
    parser = build_parser()
    by_folder = train(parser.parse_args(["train", *RUN, "--data", str(data), "--log-dir", str(tmp_path / "a")]))
    by_csv = train(
        parser.parse_args(
            ["train", *RUN, "--labels", str(labels), "--images", str(data), "--log-dir", str(tmp_path / "b")]
        )
    )
    assert by_csv["val/accuracy"] == by_folder["val/accuracy"]
    assert by_csv["val/loss"] == by_folder["val/loss"]
    assert (tmp_path / "b" / "run.json").read_text().count('"circle"') == 1


def test_val_split_uses_the_seed_and_integer_labels_are_classes(tmp_path: Path):
    write_image_folder(tmp_path / "img", per_class=3, split=False)
    files = sorted(p.relative_to(tmp_path / "img") for p in (tmp_path / "img").rglob("*.png"))
    names = sorted({f.parent.name for f in files})
    rows = [{"path": str(f), "label": str(names.index(f.parent.name) * 10)} for f in files]  # 0, 10, ... 50
    labels = write_csv(tmp_path / "labels.csv", rows)
    train_a, val_a, classes = csv_datasets(labels, tmp_path / "img", 32, val_split=0.3, seed=4)
    train_b, val_b, _ = csv_datasets(labels, tmp_path / "img", 32, val_split=0.3, seed=4)
    _, val_c, _ = csv_datasets(labels, tmp_path / "img", 32, val_split=0.3, seed=5)
    assert classes == ["0", "10", "20", "30", "40", "50"]  # numeric order, not "10" < "2"
    assert val_a.samples == val_b.samples and val_a.samples != val_c.samples
    assert len(val_a) == round(0.3 * len(rows)) and len(train_a) + len(val_a) == len(rows)
    whole = CsvImageDataset(labels, tmp_path / "img")
    image, target = whole[0]
    assert image.mode == "RGB" and whole.classes[target] == rows[0]["label"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("a.png", "cat"), ("missing.png", "dog"), ("b.png", "dog")], r"1 image\(s\) of .* are not in .*missing.png"),
        ([("a.png", "cat"), ("a.png", "dog"), ("b.png", "dog")], "lists the same image more than once: a.png"),
        ([("a.png", "cat"), ("b.png", ""), ("c.png", "dog")], r"empty label on line\(s\) 3"),
        ([("a.png", "cat"), ("b.png", "dog"), ("c.png", "dog")], "class.*cat have a single image"),
        ([("a.png", "cat"), ("b.png", "cat")], "needs at least 2"),
    ],
)
def test_bad_csv_is_refused_naming_the_rows(tmp_path: Path, rows: list[tuple[str, str]], message: str):
    images = tmp_path / "img"
    write_image_folder(images, per_class=1, split=False)
    one = next(images.rglob("*.png"))
    for name in ("a.png", "b.png", "c.png"):
        (images / name).write_bytes(one.read_bytes())
    labels = write_csv(tmp_path / "labels.csv", [{"path": p, "label": label} for p, label in rows])
    with pytest.raises(DataError, match=message):
        csv_datasets(labels, images, 32)


def test_cli_refuses_bad_combinations_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    write_image_folder(tmp_path / "img", per_class=1, split=False)
    labels = write_csv(tmp_path / "labels.csv", [{"path": "x.png", "label": "a"}])
    assert main(["train", *RUN, "--labels", str(labels)]) == 2
    assert "--labels FILE.csv and --images DIR go together" in capsys.readouterr().err
    assert main(["train", *RUN, "--labels", str(labels), "--images", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "pass only one" in capsys.readouterr().err
    assert main(["train", *RUN, "--labels", str(labels), "--images", str(tmp_path), "--label-column", "y"]) == 2
    assert "has no column 'y' (--label-column); its columns: path, label" in capsys.readouterr().err
    assert not list(tmp_path.glob("runs"))
