"""What a run remembers to be used without its training script: `run.json`, and the model it rebuilds.

`callbacks-kit train` writes `run.json` into the run folder (next to `checkpoints/`) when
fit starts (`WriteRunInfo`): the task, the model name and head, the classes, the input size and normalisation, and the
package version. `predict`, `evaluate` and `export` read it back and rebuild the model
with `build_classifier` (or `build_segmentation_model`), then load `best.safetensors`, the last checkpoint or a file.

A segmentation run's file is version 2 (it adds `task`, `loss` and `ignore_index`), so an
older callbacks-kit refuses it by name instead of rebuilding a classifier from it; a
classification run's stays version 1.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torchvision.transforms import v2

from callbacks_kit.callbacks.base import Callback
from callbacks_kit.checkpoint.format import BEST_WEIGHTS, MODEL
from callbacks_kit.checkpoint.store import read_pointer, write_atomic
from callbacks_kit.choices import TASKS as TASKS
from callbacks_kit.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from callbacks_kit.deploy.run_schema import run_json_problems
from callbacks_kit.errors import CheckpointError, DeployError, FinetuneError
from callbacks_kit.finetune.models import build_classifier
from callbacks_kit.finetune.segmentation_models import build_segmentation_model
from callbacks_kit.finetune.weights import load_state, read_state_dict

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer

RUN_INFO = "run.json"
FORMAT, VERSION = "callbacks_kit.run", 2


@dataclass
class RunInfo:
    """Everything needed to rebuild a run's model and feed it images.

    Attributes:
        model: The `--model` name (a torchvision name or `timm/<name>`).
        classes: Class names, in the order of the model's outputs.
        image_size: Side of the square input in pixels.
        resize: Images are resized to this (shorter side) before the centre crop of `image_size`:
            what validation, `predict`, `evaluate` and `export`'s users feed the model.
        head: "linear" or "mlp"; `hidden` and `dropout` describe the MLP head.
        mean, std: Per-channel normalisation after scaling pixels to [0, 1].
        checkpoint_dir: The checkpoint folder, relative to the run folder when inside it.
        monitor: The metric that picked the best checkpoint (`--monitor`).
        monitor_mode: "min" or "max": whether a lower or a higher `monitor` was better.
        best_weights: What `best.safetensors` holds: "trained" (the model's weights at the best
            epoch) or "ema" (the EMA's averaged weights, when `monitor` is a `val_ema/` metric).
        package_version: The callbacks_kit version that wrote it.
        label_smoothing: The label smoothing of the run's cross-entropy, so that `evaluate`
            reports the loss the run validated with (0 in files written before it existed).
        task: "classification" or "segmentation" (a model of `torchvision.models.segmentation`,
            whose images are resized to `image_size` square, not cropped).
        loss: The segmentation loss of `callbacks_kit.losses.SegmentationLoss` (evaluate measures it).
        ignore_index: The mask value counted nowhere (segmentation; None: none).
    """

    model: str
    classes: list[str]
    image_size: int
    resize: int
    head: str = "linear"
    hidden: int = 512
    dropout: float = 0.2
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    checkpoint_dir: str = "checkpoints"
    monitor: str = "val/accuracy"
    monitor_mode: str = "max"
    best_weights: str = "trained"
    package_version: str = ""
    label_smoothing: float = 0.0
    task: str = "classification"
    loss: str = "ce"
    ignore_index: int | None = 255

    @property
    def num_classes(self) -> int:
        """Outputs of the model."""
        return len(self.classes)

    @property
    def segmentation(self) -> bool:
        """Whether the run segments images (else it classifies them)."""
        return self.task == "segmentation"

    def transform(self) -> v2.Compose:
        """The evaluation preprocessing of the run: any PIL image or uint8 tensor to a normalised float tensor.

        Classification: resized to `resize` and centre-cropped to `image_size`; segmentation:
        resized to `image_size` square, whole (its logits are resized back to the image).
        """
        if self.segmentation:
            fit = [v2.Resize((self.image_size, self.image_size), antialias=True)]
        else:
            fit = [v2.Resize(self.resize, antialias=True), v2.CenterCrop(self.image_size)]
        return v2.Compose(
            [v2.ToImage(), *fit, v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        )

    def weights_description(self, checkpoint: str = "best") -> str:
        """Which weights `checkpoint` ("best", "last" or a path) means for this run, in words."""
        if checkpoint == "best":
            averaged = "the EMA's averaged weights" if self.best_weights == "ema" else "the trained weights"
            return f"best ({averaged} with the best {self.monitor})"
        if checkpoint == "last":
            return "last (the trained weights of the newest checkpoint)"
        return checkpoint

    def build_model(self) -> nn.Module:
        """The run's architecture with its head, randomly initialised (load weights into it)."""
        if self.segmentation:
            return build_segmentation_model(self.model, self.num_classes)
        return build_classifier(self.model, self.num_classes, head=self.head, hidden=self.hidden, dropout=self.dropout)


def _package_version() -> str:
    # Read at call time: the package __init__ imports this module, so importing it here would be a cycle.
    return str(getattr(sys.modules.get("callbacks_kit"), "__version__", "unknown"))


def write_run_info(run_dir: str | os.PathLike[str], info: RunInfo) -> Path:
    """Write `info` as `run_dir/run.json` atomically (a reader never sees half a file); returns the path.

    Raises:
        DeployError: `info` breaks the schema (`run_schema`), e.g. classes given as one string.
    """
    info.package_version = info.package_version or _package_version()
    problems = run_json_problems(asdict(info))
    if problems:
        raise DeployError(f"RunInfo cannot be written as {RUN_INFO}: {'; '.join(problems)}")
    path = Path(run_dir) / RUN_INFO
    path.parent.mkdir(parents=True, exist_ok=True)
    version = VERSION if info.segmentation else 1  # a classification run stays readable by older versions
    payload = {"format": FORMAT, "version": version, "num_classes": info.num_classes, **asdict(info)}
    write_atomic(path, (json.dumps(payload, indent=2) + "\n").encode())
    return path


class WriteRunInfo(Callback):
    """Writes `run.json` into `run_dir` when `fit` starts, on the main process; keeps it in every checkpoint.

    At `on_fit_start` every input check has passed (a run refused for bad input leaves an
    earlier `run.json` as it was) and no checkpoint of this run exists yet. The same
    description is the callback's checkpointed state, so a checkpoint knows the classes it
    was trained on: resuming it on other classes, or on the same names in another order
    (which would reassign every output), is refused.
    """

    def __init__(self, run_dir: str | os.PathLike[str], info: RunInfo) -> None:
        self.run_dir = Path(run_dir)
        self.info = info

    def state_dict(self) -> dict[str, Any]:
        """The run's description, as `run.json` holds it."""
        return asdict(self.info)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint trained on other classes (or the same in another order)."""
        saved = state.get("classes")
        if isinstance(saved, list) and saved != list(self.info.classes):
            raise CheckpointError(class_change_message(saved, list(self.info.classes)))

    def on_fit_start(self, trainer: Trainer) -> None:
        """Write the file (main process only)."""
        if trainer.is_main_process:
            write_run_info(self.run_dir, self.info)


def class_change_message(
    saved: list[str],
    now: list[str],
    new_run: str = "start a new run from its weights (callbacks_kit.finetune.load_weights, or --init-from)",
) -> str:
    """Why a checkpoint trained on the classes `saved` cannot go on with `now`, naming both and the fixes."""
    if sorted(saved) == sorted(now):
        change = "the same class names in another order, which would give every output another class"
    else:
        change = "other classes"
    return (
        f"the checkpoint was trained on the classes {saved}, and this run's data has {change}: {now}. Resume "
        f"with the data the run was trained on, or {new_run}"
    )


def run_json_path(run: str | os.PathLike[str]) -> Path:
    """`run.json` of a run folder; also accepted: the file itself, or the run's checkpoint folder."""
    run = Path(run)
    if not run.exists():
        raise CheckpointError(
            f"{run}: no such run folder; pass the --log-dir folder of a run trained with `callbacks-kit train` "
            "(check the path)"
        )
    for candidate in (run, run / RUN_INFO, run.parent / RUN_INFO):
        if candidate.is_file() and candidate.name == RUN_INFO:
            return candidate
    raise CheckpointError(
        f"{run} is not a callbacks-kit run: it holds no {RUN_INFO}. Pass the --log-dir folder of a run trained "
        f"with `callbacks-kit train` (runs trained by an older callbacks-kit have no {RUN_INFO}: train again, or write "
        "one with callbacks_kit.deploy.write_run_info)"
    )


def read_run_info(run: str | os.PathLike[str]) -> RunInfo:
    """The `RunInfo` of a run folder, checked.

    Raises:
        CheckpointError: no `run.json`, an unreadable one, or one of another format or a newer version.
    """
    path = run_json_path(run)
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}; the run's description is damaged") from exc
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path} is not a callbacks-kit run description: {run_json_problems(data)[0]}; it was edited or "
            "replaced: restore the run's own file, or train the run again"
        )
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a callbacks-kit run description (format {data.get('format')!r})")
    if not isinstance(data.get("version"), int) or isinstance(data["version"], bool) or data["version"] > VERSION:
        raise CheckpointError(
            f"{path} has run format version {data.get('version')}, newer than this callbacks-kit reads ({VERSION}, "
            f"version {_package_version()}); upgrade callbacks-kit (written by {data.get('package_version')})"
        )
    problems = run_json_problems(data)
    if problems:
        raise CheckpointError(
            f"{path} does not describe a run callbacks-kit can use: {'; '.join(problems)}. It was edited or written "
            "by other code: fix those fields (docs/guide.md, After training, lists them), or train the run again"
        )
    known = set(RunInfo.__dataclass_fields__)
    return RunInfo(**{key: value for key, value in data.items() if key in known})


def checkpoint_dir(run: str | os.PathLike[str], info: RunInfo) -> Path:
    """The run's checkpoint folder (`checkpoint_dir` is relative to the run folder unless absolute)."""
    return run_json_path(run).parent / info.checkpoint_dir


def weights_file(run: str | os.PathLike[str], info: RunInfo, checkpoint: str = "best") -> Path:
    """The weights `checkpoint` means: "best" (`best.safetensors`), "last" (the newest checkpoint) or a path.

    A path may be a weights file or a checkpoint folder (its `model.safetensors`).
    """
    folder = checkpoint_dir(run, info)
    if checkpoint == "best":
        path = folder / BEST_WEIGHTS
        if not path.is_file():
            raise CheckpointError(
                f"{path} does not exist: the run saved no best model yet (it ends at its first validation); "
                "use --checkpoint last, or a checkpoint folder"
            )
        return path
    if checkpoint == "last":
        name = read_pointer(folder)
        if name is None or not (folder / name / MODEL).is_file():
            raise CheckpointError(f"{folder} has no committed checkpoint (no last.json); use --checkpoint best")
        return folder / name / MODEL
    path = Path(checkpoint)
    if path.is_dir():
        path = path / MODEL
    if not path.is_file():
        raise CheckpointError(f"--checkpoint {checkpoint}: no such weights file or checkpoint folder")
    return path


def load_run_model(run: str | os.PathLike[str], checkpoint: str = "best") -> tuple[nn.Module, RunInfo]:
    """The run's model with the chosen weights loaded (strictly), in eval mode, on the CPU; and its `RunInfo`."""
    info = read_run_info(run)
    path = weights_file(run, info, checkpoint)
    try:
        state = read_state_dict(path)
    except FinetuneError as exc:
        verified = (
            ""
            if checkpoint not in ("best", "last")
            else (
                "; the checkpoint folders hold verified copies: use --checkpoint last, or a checkpoint folder"
                if checkpoint == "best"
                else "; use --checkpoint best, or an older checkpoint folder"
            )
        )
        raise CheckpointError(f"cannot use the weights {path}: {exc}{verified}") from exc
    model = info.build_model()
    _check_outputs(model, state, info, path)
    try:
        load_state(model, state, path, strict=True)
    except FinetuneError as exc:
        raise CheckpointError(f"{path} does not fit the model that {RUN_INFO} describes: {exc}") from exc
    return model.eval(), info


def _check_outputs(model: nn.Module, state: dict[str, torch.Tensor], info: RunInfo, path: Path) -> None:
    """Refuse weights whose output layer has another number of classes than `run.json` lists."""
    own = model.state_dict()
    differ = [key for key in state if key in own and state[key].shape != own[key].shape]
    if not differ:
        return
    heads = [
        key
        for key in differ
        if own[key].ndim >= 1 and own[key].shape[0] == info.num_classes and own[key].shape[1:] == state[key].shape[1:]
    ]
    if heads == differ:
        key = max(heads, key=lambda name: state[name].ndim)  # the weight rather than the bias
        raise CheckpointError(
            f"{RUN_INFO} lists {info.num_classes} classes, but the weights {path} have {state[key].shape[0]} outputs "
            f"({key}: {list(state[key].shape)}): the class names and the weights belong to different "
            f"runs. Restore the run's own {RUN_INFO}, or pass the weights trained with it (--checkpoint)"
        )
