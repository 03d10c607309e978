"""CSV-labelled images: `CsvImageDataset`, `--labels/--images`, and the bad CSVs a user brings."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from helpers.images import write_image_folder
from torchvision.datasets import ImageFolder

from callbacks_kit.cli import build_parser, main
from callbacks_kit.cli.train import train
from callbacks_kit.data.csv_labels import CsvImageDataset, csv_datasets, read_labels
from callbacks_kit.errors import DataError

RUN = ["--epochs", "1", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--no-progress", "--no-inspection"]


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_csv_trains_exactly_as_the_same_image_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
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
    started = [line for line in capsys.readouterr().out.splitlines() if line.startswith("training ")]
    assert started[1].startswith(f"training resnet18 on {labels} (") and "None" not in started[1]  # not "shapes"
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


def _images(root: Path, names: list[str]) -> Path:
    """`root` with one small PNG under each of `names` (relative paths)."""
    write_image_folder(root / "src", per_class=1, split=False)
    source = next((root / "src").rglob("*.png")).read_bytes()
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(source)
    return root


def _write_lines(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def test_the_label_column_is_chosen_by_name_before_position(tmp_path: Path):
    images = _images(tmp_path / "img", [f"{s}/{c}{i}.png" for s in ("train", "val") for c in "ab" for i in range(2)])
    rows = [f"{s}/{c}{i}.png,{s},{c}" for s in ("train", "val") for c in "ab" for i in range(2)]
    labels = _write_lines(tmp_path / "labels.csv", ["file,split,Class", *rows])
    train, val, classes = csv_datasets(labels, images, 32)  # by name: Class, not split (2 values too)
    assert classes == ["a", "b"] and len(train) == len(val) == 4
    assert [Path(path).name for path, _ in val.samples] == ["a0.png", "a1.png", "b0.png", "b1.png"]
    only = _write_lines(tmp_path / "only.csv", ["file,kind", *(r.rsplit(",", 2)[0] + "," + r[-1] for r in rows)])
    assert csv_datasets(only, images, 32, val_split=0.5)[2] == ["a", "b"]  # one column left: it is the labels


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("path,label,class", r"has 2 label columns \(label, class\): choose the column of labels with --label-column"),
        ("path,kind,notes", r"no column named label, class, target, category, and 2 others \(kind, notes\): choose"),
    ],
)
def test_an_ambiguous_label_column_is_refused_naming_the_flag(tmp_path: Path, header: str, message: str):
    images = _images(tmp_path / "img", ["a.png", "b.png"])
    labels = _write_lines(tmp_path / "labels.csv", [header, "a.png,x,y", "b.png,z,w"])
    with pytest.raises(DataError, match=message):
        csv_datasets(labels, images, 32)


def test_integer_labels_are_classes_by_value_and_paths_are_normalised(tmp_path: Path):
    images = _images(tmp_path / "img", [f"{i}.png" for i in range(6)])
    labels = _write_lines(tmp_path / "labels.csv", ["path,label", "0.png,1", "1.png,01", "2.png,2", "3.png,002",
                                                    "4.png,10", "5.png,10"])  # fmt: skip
    train, val, classes = csv_datasets(labels, images, 32, val_split=0.5)
    assert classes == ["1", "2", "10"]
    by_name = {Path(path).name: classes[target] for path, target in train.samples + val.samples}
    assert by_name["0.png"] == by_name["1.png"] == "1" and by_name["3.png"] == "2"
    twice = _write_lines(tmp_path / "twice.csv", ["path,label", "0.png,1", "1.png,2", "./0.png,1", "sub/../2.png,2"])
    with pytest.raises(DataError, match=r"the same image more than once: \./0\.png \(line 4, the image of line 2\)"):
        csv_datasets(twice, images, 32)


@pytest.mark.parametrize(
    ("lines", "encoding", "extra", "message"),
    [
        (["a.png,x", "b.png,y"], "utf-8", [], "has no header row: its first line names the image 'a.png'"),
        (["path,label", "a.png,x", "b.png,y"], "latin-1", [], None),  # pure ASCII: read as UTF-8
        (["path,label", "a.png,é", "b.png,y"], "latin-1", [], r"is not UTF-8 text \(byte .*save it as UTF-8"),
        (["path;label", "a.png;x", "b.png;y"], "utf-8", [], r"separated by ';': save it with commas"),
        (
            ["path,label", "a.png,x,extra", "b.png,y"],
            "utf-8",
            ["--label-column", "lbl"],
            r"the header has 2 fields, and line 2 has 3 \(an unquoted comma",
        ),  # fmt: skip
    ],
)
def test_bad_csv_files_are_one_line(tmp_path, capsys, lines, encoding, extra, message):
    images = _images(tmp_path / "img", ["a.png", "b.png"])
    labels = _write_lines(tmp_path / "labels.csv", lines, encoding)
    if message is None:
        assert read_labels(labels, images).classes == ["x", "y"]
        return
    with pytest.raises(DataError, match=message):
        read_labels(labels, images, label_column=extra[1] if extra else None)
    assert main(["train", *RUN, "--labels", str(labels), "--images", str(images), *extra]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1


def test_utf16_csv_and_a_superscript_label_are_read(tmp_path: Path):
    images = _images(tmp_path / "img", ["a.png", "b.png", "c.png"])
    labels = _write_lines(tmp_path / "labels.csv", ["path,label", "a.png,chat", "b.png,²", "c.png,2"], "utf-16")
    table = read_labels(labels, images)  # "²" is a digit to str.isdigit, not a number: a name like the others
    assert table.classes == ["2", "chat", "²"] and table.targets == [1, 2, 0]
