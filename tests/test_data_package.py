"""The data package: every public name importable from `callbacks_kit.data`, and the callbacks, which
need only the ImageNet mean and std and class names from it, not loading its image-file modules."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import callbacks_kit
from callbacks_kit import data

REPO = Path(__file__).resolve().parents[1]
INIT = REPO / "callbacks_kit" / "data" / "__init__.py"
# The names `callbacks_kit.data` offered as one module; they keep working from the package.
NAMES_OF_THE_SINGLE_MODULE = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SHAPES",
    "AUGMENTS",
    "POLICIES",
    "PROGRESS_FROM",
    "ShapesDataset",
    "denormalize",
    "augmentation",
    "train_transform",
    "eval_transform",
    "image_folder_datasets",
    "load_image",
    "check_image",
    "drop_unreadable",
    "CheckedImageFolder",
    "base_dataset",
    "class_names",
    "default_workers",
    "pin_by_default",
    "make_loader",
]
# Modules of the package that read image files or build torchvision datasets and transforms.
HEAVY = ["shapes", "transforms", "images", "folders", "csv_labels"]
# Callbacks that draw images: they need IMAGENET_MEAN and IMAGENET_STD (KernelGrid through inspection.probe).
DRAWING = ["kernel_grid", "batch_grid", "embeddings", "feature_maps", "grad_cam", "top_losses"]


def type_checking_imports() -> dict[str, str]:
    """Name -> module, as the `if TYPE_CHECKING:` block of data/__init__.py imports it for type checkers."""
    found: dict[str, str] = {}
    for node in ast.parse(INIT.read_text()).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.body:
                assert isinstance(child, ast.ImportFrom) and child.module
                found.update({alias.name: child.module for alias in child.names})
    return found


def test_every_name_of_the_single_module_is_still_there():
    assert set(NAMES_OF_THE_SINGLE_MODULE) <= set(data.__all__)
    exec(f"from callbacks_kit.data import {', '.join(NAMES_OF_THE_SINGLE_MODULE)}", {})


def test_the_public_names_the_type_checkers_see_and_the_runtime_gives_agree():
    imports = type_checking_imports()
    assert sorted(imports) == sorted(data.__all__)
    assert len(set(data.__all__)) == len(data.__all__)
    for name, module in imports.items():
        assert getattr(data, name) is getattr(importlib.import_module(module), name), name
    assert set(data.__all__) <= set(dir(data))


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        data.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        exec("from callbacks_kit.data import no_such_name", {})


def test_the_csv_dataset_is_the_same_class_at_the_top_level():
    assert callbacks_kit.CsvImageDataset is data.CsvImageDataset


def loaded_after(statement: str) -> dict[str, object]:
    """What a fresh interpreter holds after `statement`, run with the package's own `__init__` left out.

    `callbacks_kit/__init__.py` re-exports the whole API (the deploy code and `CsvImageDataset`
    among it), so a plain `import callbacks_kit.x` loads every module. The package object is
    made from its spec without running that file, which leaves what `x`'s own imports load.
    """
    script = f"""
import importlib.util, json, sys
spec = importlib.util.find_spec("callbacks_kit")
sys.modules["callbacks_kit"] = importlib.util.module_from_spec(spec)
{statement}
print(json.dumps({{
    "package": sorted(m for m in sys.modules if m.startswith("callbacks_kit.")),
    "PIL": "PIL" in sys.modules,
    "torchvision": "torchvision" in sys.modules,
    "torchvision.datasets": "torchvision.datasets" in sys.modules,
}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_no_callback_loads_the_image_file_modules_of_the_data_package():
    # Importing one callback runs callbacks/__init__.py, which imports them all. PIL and
    # torchvision.datasets are loaded all the same, and rightly: inspection/render.py draws with
    # PIL, and `import torchvision` (for torchvision.utils.make_grid) imports torchvision.datasets.
    loaded = loaded_after("\n".join(f"import callbacks_kit.callbacks.{name}" for name in DRAWING))
    assert "callbacks_kit.data.normalization" in loaded["package"]
    heavy = [f"callbacks_kit.data.{name}" for name in HEAVY]
    assert not set(heavy) & set(loaded["package"]), sorted(set(heavy) & set(loaded["package"]))


@pytest.mark.slow
def test_the_imagenet_constants_load_neither_pil_nor_torchvision():
    loaded = loaded_after("from callbacks_kit.data.normalization import IMAGENET_MEAN, IMAGENET_STD")
    assert not loaded["PIL"] and not loaded["torchvision"] and not loaded["torchvision.datasets"]
    assert loaded["package"] == ["callbacks_kit.data", "callbacks_kit.data.normalization", "callbacks_kit.exports"]
