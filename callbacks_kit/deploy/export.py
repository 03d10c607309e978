"""Shipping a trained run: state_dict, TorchScript, torch.export or ONNX, each checked against PyTorch once written.

A segmentation run's model is wrapped to return its logits tensor `(N, C, H, W)` instead of
torchvision's `{"out": logits}` (`SegmentationLogits`) before it reaches a writer, so every
writer in `WRITERS` serves both tasks: a format added there (with its suffix in `SUFFIXES`
and its name in `EXPORT_FORMATS`) exports segmentation runs too. The state_dict is the
torchvision model's own, for `torchvision.models.get_model(name, num_classes=N)`.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from callbacks_kit.choices import EXPORT_FORMATS as EXPORT_FORMATS
from callbacks_kit.choices import EXPORT_TOLERANCE
from callbacks_kit.compat import onnx_dynamo_exporter
from callbacks_kit.deploy.output_file import check_output_file
from callbacks_kit.deploy.run_info import RunInfo, load_run_model, run_json_path
from callbacks_kit.errors import DeployError
from callbacks_kit.finetune.heads import replace_head
from callbacks_kit.finetune.segmentation_models import SegmentationLogits, build_segmentation_model
from callbacks_kit.finetune.timm_models import create_timm_model, is_timm_name

SUFFIXES = {"state_dict": ".pth", "torchscript": ".torchscript.pt", "pt2": ".pt2", "onnx": ".onnx"}
# Printed by `callbacks-kit export --format torchscript` next to torch's own FutureWarnings.
TORCHSCRIPT_NOTE = (
    "TorchScript is deprecated since torch 2.14 (torch.jit.trace and torch.jit.load warn) but still what many "
    "serving stacks load; --format pt2 writes its successor, a torch.export ExportedProgram"
)
# The batch sizes an exported program accepts (pt2, ONNX): the sample batch's size is not baked in.
BATCH_RANGE = (1, 4096)
# The packages each format needs beyond torch, and the extra that installs them.
NEEDS = {"onnx": ("onnx", "onnxscript", "onnxruntime")}
TOLERANCE = EXPORT_TOLERANCE


@dataclass
class ExportResult:
    """Where the export went and the largest absolute difference of its outputs from PyTorch's."""

    format: str
    path: Path
    max_abs_diff: float


def check_packages(fmt: str) -> None:
    """Refuse a format whose optional packages are missing, naming the extra that installs them."""
    if fmt not in EXPORT_FORMATS:
        raise DeployError(f"--format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    for name in NEEDS.get(fmt, ()):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise DeployError(
                f'--format {fmt} needs the {name} package, which is not installed: pip install "callbacks-kit[export]"'
            ) from exc


def plain_model(info: RunInfo) -> nn.Module:
    """The run's architecture as torchvision (or timm) builds it for `num_classes`, without callbacks_kit.

    `torchvision.models.get_model(name, num_classes=N)`, with the MLP head put back when the
    run used one: what a user of the exported state_dict writes.
    """
    if info.segmentation:
        return build_segmentation_model(info.model, info.num_classes)  # torchvision's, without weights or aux head
    if is_timm_name(info.model):
        model = create_timm_model(info.model, num_classes=info.num_classes)
    else:
        kwargs = {"aux_logits": False, "init_weights": False} if info.model == "googlenet" else {}
        if info.model == "inception_v3":
            kwargs = {"init_weights": False}
        model = torchvision.models.get_model(info.model, num_classes=info.num_classes, **kwargs)
    if info.head == "mlp":
        replace_head(model, info.num_classes, "mlp", info.hidden, info.dropout)
    return model


def sample_batch(info: RunInfo, size: int = 2, seed: int = 0) -> torch.Tensor:
    """A fixed batch shaped like the run's inputs (normalised values), to compare outputs on."""
    return torch.randn(size, 3, info.image_size, info.image_size, generator=torch.Generator().manual_seed(seed))


def _max_diff(expected: torch.Tensor, got: torch.Tensor | object) -> float:
    got = torch.as_tensor(got)
    if got.shape != expected.shape:
        raise DeployError(f"the export returns shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}")
    return float((expected - got.float()).abs().max())


def _write_state_dict(model: nn.Module, info: RunInfo, path: Path, batch: torch.Tensor) -> float:
    inner = model.model if isinstance(model, SegmentationLogits) else model  # torchvision's keys, no wrapper prefix
    torch.save({k: v.detach().cpu().contiguous() for k, v in inner.state_dict().items()}, path)
    rebuilt = plain_model(info)
    rebuilt.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    if isinstance(model, SegmentationLogits):
        rebuilt = SegmentationLogits(rebuilt)
    with torch.inference_mode():
        return _max_diff(model(batch), rebuilt.eval()(batch))


def _check_batches(model: nn.Module, batch: torch.Tensor) -> list[torch.Tensor]:
    """The batches an export is compared on: `batch`, and for segmentation one of another, non-square size too."""
    if not isinstance(model, SegmentationLogits):
        return [batch]
    height, width = batch.shape[-2:]
    other = torch.randn(1, 3, height + 16, width + 8, generator=torch.Generator().manual_seed(1))
    return [batch, other]


def _write_torchscript(model: nn.Module, info: RunInfo, path: Path, batch: torch.Tensor) -> float:
    # Deprecated in favour of torch.export (`TORCHSCRIPT_NOTE`); torch's FutureWarnings are left for the user to see.
    with torch.inference_mode():
        traced = torch.jit.trace(model, batch[:1], check_trace=False)
        traced.save(str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return max(_max_diff(model(x), loaded(x)) for x in _check_batches(model, batch))


def _dynamic_dims(model: nn.Module) -> dict[int, torch.export.Dim]:
    """The input's dynamic dimensions: the batch; for a segmentation model the height and width too."""
    low, high = BATCH_RANGE
    dims = {0: torch.export.Dim("batch", min=low, max=high)}
    if isinstance(model, SegmentationLogits):  # any image size: the logits come at the input's size
        dims.update({2: torch.export.Dim("height", min=32, max=8192), 3: torch.export.Dim("width", min=32, max=8192)})
    return dims


def _write_pt2(model: nn.Module, info: RunInfo, path: Path, batch: torch.Tensor) -> float:
    # torch.export's ExportedProgram: `torch.export.load(path).module()` runs it without this package.
    try:
        program = torch.export.export(model, (batch,), dynamic_shapes=(_dynamic_dims(model),))
    except Exception as exc:  # torch.export's errors have no common base class across versions
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DeployError(
            f"torch.export could not export {info.model} for any batch size with torch {torch.__version__} "
            f"({first}); torch 2.5 or later exports it, or choose --format onnx, torchscript or state_dict"
        ) from exc
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    with torch.inference_mode():
        return _max_diff(model(batch), loaded(batch))


def _write_onnx(model: nn.Module, info: RunInfo, path: Path, batch: torch.Tensor) -> float:
    import onnxruntime

    if onnx_dynamo_exporter():
        program = torch.onnx.export(
            model,
            (batch,),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=(_dynamic_dims(model),),
            external_data=False,
            verbose=False,
        )
        assert program is not None
        program.save(str(path), external_data=False)
    else:  # torch before 2.5: the TorchScript-based exporter, the same dimensions named dynamic
        names = {0: "batch", 2: "height", 3: "width"}
        axes = {dim: names[dim] for dim in _dynamic_dims(model)}
        with torch.inference_mode():
            torch.onnx.export(
                model,
                (batch,),
                str(path),
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": axes, "logits": axes},
                opset_version=17,
            )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = []
    for x in _check_batches(model, batch):
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.inference_mode():
            diffs.append(_max_diff(model(x), got))
    return max(diffs)


WRITERS = {"state_dict": _write_state_dict, "torchscript": _write_torchscript, "pt2": _write_pt2, "onnx": _write_onnx}


def export_run(
    run: str | os.PathLike[str],
    fmt: str,
    output: str | os.PathLike[str] | None = None,
    checkpoint: str = "best",
    overwrite: bool = False,
    tolerance: float = TOLERANCE,
) -> ExportResult:
    """Export a run's model and check the file on a sample batch against the PyTorch model.

    The file is written under a temporary name, loaded back (ONNX: run with onnxruntime on
    the CPU) and compared; only a file within `tolerance` replaces `output`.

    Args:
        run: The run folder.
        fmt: "state_dict" (a `.pth` for `torch.load(..., weights_only=True)` into
            `torchvision.models.get_model(name, num_classes=N)`), "torchscript" (deprecated in
            torch 2.14: `TORCHSCRIPT_NOTE`), "pt2" (an `ExportedProgram` for `torch.export.load`,
            any batch size in `BATCH_RANGE`) or "onnx".
        output: The file to write; default `<run>/export/model<suffix>`.
        checkpoint: "best", "last", or a weights file or checkpoint folder.
        overwrite: Replace an existing `output` (refused by default).
        tolerance: Largest absolute difference of the logits accepted.

    Raises:
        DeployError: the format's package is missing, `tolerance` is not a finite number >= 0,
            `output` exists, is a folder or cannot be written (all before the model is loaded),
            or the check fails.
    """
    check_packages(fmt)
    check_tolerance(tolerance)
    path = Path(output) if output else run_json_path(run).parent / "export" / f"model{SUFFIXES[fmt]}"
    check_output_file(path, overwrite=overwrite, example=f"model{SUFFIXES[fmt]}")  # before the model is loaded
    model, info = load_run_model(run, checkpoint)
    model = model.float().cpu().eval()
    if info.segmentation:
        model = SegmentationLogits(model).eval()  # the logits tensor (N, C, H, W), not {"out": ...}
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        diff = WRITERS[fmt](model, info, tmp, sample_batch(info))
        if not diff <= tolerance:
            raise DeployError(
                f"the {fmt} export differs from the PyTorch model by {diff:.3g} (more than {tolerance:g}) on a "
                "sample batch; it was not written. Report this with the model name"
            )
        os.replace(tmp, path)
    except OSError as exc:
        raise DeployError(f"--output {path}: cannot write it ({exc.strerror or exc}); choose another place") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(fmt, path, diff)


def check_tolerance(tolerance: float) -> None:
    """`--tolerance`: a finite number of at least 0 (NaN would accept nothing, a negative value too)."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < float("inf"):
        raise DeployError(
            f"--tolerance must be a finite number of at least 0 (the largest absolute difference of the logits "
            f"accepted; {TOLERANCE:g} by default), got {tolerance}"
        )
