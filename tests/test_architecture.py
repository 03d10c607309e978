"""The package's structure, checked from its source: no import cycle, no private state crossing
modules, private third-party APIs only in `compat.py`, and one error hierarchy."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import callbacks_kit
from callbacks_kit import compat
from callbacks_kit.errors import CallbacksKitError

PACKAGE = Path(callbacks_kit.__file__).parent
MODULES = {
    ".".join(("callbacks_kit", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__"): path
    for path in sorted(PACKAGE.rglob("*.py"))
}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST, module: str) -> set[str]:
    """Package modules `module` imports when it runs (module level or in functions), not for type checking."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative import
                base = ".".join(module.split(".")[: -node.level] + [node.module])
            submodules = {f"{base}.{alias.name}" for alias in node.names} & set(MODULES)
            found.update(submodules if len(submodules) == len(node.names) else {base, *submodules})
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in MODULES}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it makes Python import.

    Importing `a.b.c` first runs the `__init__` of `a.b`, so a module outside a package
    that imports into it also depends on that package's `__init__`. A module inside a
    package is only ever imported while its package's `__init__` is already running or
    done, so that edge is left out (it is not a cycle Python can fail on).
    """
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges: set[str] = set()
        for target in _runtime_imports(ast.parse(path.read_text()), module):
            edges.add(target)
            parts = target.split(".")
            for i in range(2, len(parts)):
                package = ".".join(parts[:i])
                if package in MODULES and not module.startswith(package + ".") and module != package:
                    edges.add(package)
        edges.discard(module)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle_through_a_package_init():
    # trainer -> callbacks.base pulls in callbacks/__init__, which imports a callback that imports trainer.
    graph = {
        "callbacks_kit.trainer": {"callbacks_kit.callbacks.base", "callbacks_kit.callbacks"},
        "callbacks_kit.callbacks": {"callbacks_kit.callbacks.early_stopping"},
        "callbacks_kit.callbacks.early_stopping": {"callbacks_kit.trainer"},
        "callbacks_kit.callbacks.base": set(),
    }
    assert find_cycle(graph) == [
        "callbacks_kit.callbacks",
        "callbacks_kit.callbacks.early_stopping",
        "callbacks_kit.trainer",
        "callbacks_kit.callbacks",
    ]


# The layers, lowest first: a module imports only modules of its own layer or of lower ones
# (module level and inside functions; `if TYPE_CHECKING:` blocks aside). docs/design.md draws them.
# "x" is the module (or package __init__) x alone, "x.*" is x and everything under it; an exact
# name wins over a package, a deeper package over a shallower one.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("errors", "state", "batches", "metrics", "compat", "cpu", "norms", "hooks", "layers", "losses",
              "cadence", "folder_lock", "exports", "choices", "segmentation_metrics")),
    ("data", ("data.*",)),
    ("machinery", ("checkpoint.*", "inspection.*", "finetune.*", "distributed", "checks")),
    # callbacks/__init__ re-exports lazily: importing callbacks.base runs it without importing the callbacks
    ("loop", ("trainer", "validation", "train_log", "epoch_batches", "callbacks", "callbacks.base",
              "callbacks.progress_bar")),
    ("callbacks", ("callbacks.*",)),
    ("tools", ("lr_finder", "deploy.*")),
    ("cli", ("cli.*", "__main__")),
    ("api", ("",)),  # callbacks_kit/__init__.py re-exports the public API
]  # fmt: skip


def layer_of(module: str) -> int:
    """The index in LAYERS of `module`."""
    name = module.removeprefix("callbacks_kit").removeprefix(".")
    best: tuple[int, int] | None = None  # (how specific the match is, layer)
    for index, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            base = pattern.removesuffix(".*")
            if pattern == name:
                rank = 2 * len(base) + 1
            elif pattern.endswith(".*") and (name == base or name.startswith(base + ".")):
                rank = 2 * len(base)
            else:
                continue
            if best is None or rank > best[0]:
                best = (rank, index)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in tests/test_architecture.py")
    return best[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """`a -> b (layer x -> layer y)` for each import from a lower layer into a higher one."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            low, high = layer_of(module), layer_of(target)
            if high > low:
                found.append(f"{module} -> {target} ({LAYERS[low][0]} -> {LAYERS[high][0]})")
    return found


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_imports_only_point_down_the_layers():
    upward = upward_imports(import_graph())
    assert not upward, "imports that point up the layers (move the code down, or pass what it needs in):\n" + "\n".join(
        upward
    )


def test_the_layer_check_catches_an_import_inside_a_function():
    tree = ast.parse("def resume(trainer):\n    from callbacks_kit.callbacks.model_checkpoint import ModelCheckpoint\n")
    graph = {"callbacks_kit.checkpoint.restore": _runtime_imports(tree, "callbacks_kit.checkpoint.restore")}
    assert upward_imports(graph) == [
        "callbacks_kit.checkpoint.restore -> callbacks_kit.callbacks.model_checkpoint (machinery -> callbacks)"
    ]


def test_the_layer_check_ignores_type_checking_imports():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from callbacks_kit.trainer import Trainer\n"
    )
    assert _runtime_imports(tree, "callbacks_kit.checkpoint.restore") == set()


def test_every_module_imports_on_its_own():
    for module in MODULES:
        importlib.import_module(module)
    assert {m.name for m in pkgutil.walk_packages(callbacks_kit.__path__, "callbacks_kit.")} <= set(MODULES)


def private_uses(path: Path) -> list[str]:
    """`obj._name` where `obj` is not `self`/`cls` and not something the module defines itself."""
    tree = ast.parse(path.read_text())
    own: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            own.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            own.update(t.id for t in targets if isinstance(t, ast.Name))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not re.match(r"_[A-Za-z]", node.attr) or node.attr.startswith("__"):
            continue
        value = node.value
        if isinstance(value, ast.Name) and (value.id in ("self", "cls") or value.id in own):
            continue
        found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_touches_private_attributes_of_objects_it_does_not_own():
    offenders = [
        use for module, path in MODULES.items() if module != "callbacks_kit.compat" for use in private_uses(path)
    ]
    assert not offenders, "private attributes used outside their owner (route them through compat.py):\n" + "\n".join(
        offenders
    )


def test_the_private_use_check_catches_a_trainer_attribute(tmp_path: Path):
    sample = PACKAGE / "sample_for_test.py"
    sample.write_text("def f(trainer, accelerator):\n    trainer._resume_batches = 1\n    return accelerator._models\n")
    try:
        assert [use.split(": ")[1] for use in private_uses(sample)] == [
            "trainer._resume_batches",
            "accelerator._models",
        ]
    finally:
        sample.unlink()


def test_no_trainer_or_accelerator_private_attribute_is_named_outside_its_owner():
    pattern = re.compile(r"\b(trainer|accelerator)\._[a-z]")
    hits = [
        f"{path.relative_to(PACKAGE.parent)}:{i}: {line.strip()}"
        for module, path in MODULES.items()
        if module not in ("callbacks_kit.trainer", "callbacks_kit.compat")
        for i, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    examples = Path(__file__).resolve().parents[1] / "examples"
    hits += [
        f"{path.name}:{i}: {line.strip()}"
        for path in sorted(examples.glob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line) or re.search(r"\._forward_hooks", line)
    ]
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize(("owner", "name"), compat.PRIVATE_NAMES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_every_private_api_the_package_relies_on_still_exists(owner, name):
    assert hasattr(owner, name), (
        f"{getattr(owner, '__name__', owner)}.{name} is gone in this version; callbacks_kit/compat.py relies on it: "
        "update compat.py for this version, or install a version inside the range setup.cfg states"
    )


def test_the_private_apis_behave_as_compat_expects():
    import torch
    from torch import nn
    from torch.optim.lr_scheduler import OneCycleLR, SequentialLR, StepLR

    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    one_cycle = OneCycleLR(optimizer, max_lr=1.0, total_steps=10)
    assert compat.one_cycle_phase_ends(one_cycle) == [2.0, 9.0]
    lists = compat.scheduler_lr_lists(one_cycle)
    assert any(values is one_cycle.get_last_lr() for values in lists)
    chained = SequentialLR(optimizer, [StepLR(optimizer, 1), StepLR(optimizer, 2)], milestones=[3])
    assert len(compat.nested_schedulers(chained)) == 3
    assert isinstance(model[1], compat.BATCH_NORMS) and not isinstance(model[0], compat.BATCH_NORMS)
    handle = model[0].register_forward_hook(lambda *args: None)
    assert compat.has_forward_hooks(model[0]) and not compat.has_forward_hooks(model[1])
    handle.remove()
    assert not compat.has_forward_hooks(model[0])
    compiled = torch.compile(model)
    assert compat.compiled_inner(compiled) is model and compat.compiled_inner(model) is None
    norms = compat.grad_norms([torch.tensor([3.0, 4.0]), torch.tensor([1.0])])
    assert [float(n) for n in norms] == [5.0, 1.0]


def test_event_records_carry_tensorboards_own_checksums(tmp_path):
    """The C CRC-32C the writers use gives TensorBoard's values: on raw bytes and on every record of a real run."""
    import struct

    import torch
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference
    from tensorboard.summary.writer import record_writer

    from callbacks_kit.compat import masked_crc32c
    from callbacks_kit.inspection.event_report import event_files
    from callbacks_kit.inspection.run_writer import RunWriter

    generator = torch.Generator().manual_seed(0)
    for size in (0, 1, 7, 8, 4097, 100_003):
        data = torch.randint(0, 256, (size,), dtype=torch.uint8, generator=generator).numpy().tobytes()
        assert masked_crc32c(data) == reference(data)
    writer = RunWriter(str(tmp_path))
    # RecordWriter.write looks the function up in its module at every call: that is what is replaced
    assert "masked_crc32c" in record_writer.RecordWriter.write.__code__.co_names
    assert record_writer.masked_crc32c is masked_crc32c
    writer.add_scalar("loss", 0.5, 3)
    writer.add_image("image", torch.rand(3, 40, 60, generator=generator), 3)
    writer.close()
    (path,) = event_files(str(tmp_path))
    blob, records = open(path, "rb").read(), 0
    while blob:
        header, (header_crc,) = blob[:8], struct.unpack("<I", blob[8:12])
        (length,) = struct.unpack("<Q", header)
        data, (data_crc,) = blob[12 : 12 + length], struct.unpack("<I", blob[12 + length : 16 + length])
        assert (header_crc, data_crc) == (reference(header), reference(data))
        blob, records = blob[16 + length :], records + 1
    assert records == 3  # the file version, the scalar, the image
    tags = [v.tag for event in EventFileLoader(str(path)).Load() for v in event.summary.value]
    assert tags == ["loss", "image"]


def test_the_accelerator_keeps_what_swap_prepared_model_replaces():
    import accelerate.accelerator
    from torch import nn

    from callbacks_kit.distributed import build_accelerator

    accelerator = build_accelerator("no", 1, cpu=True)
    old = accelerator.prepare(nn.Linear(2, 2))
    assert accelerator._models == [old]
    new = nn.Linear(2, 2)
    compat.swap_prepared_model(accelerator, old, new)
    assert accelerator._models == [new] and new._is_accelerate_prepared
    # Accelerate skips objects carrying this mark when preparing again.
    assert "_is_accelerate_prepared" in inspect.getsource(accelerate.accelerator)


def test_every_error_class_of_the_package_derives_from_the_base():
    found = {}
    for module in MODULES:
        for name, obj in inspect.getmembers(importlib.import_module(module), inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("callbacks_kit"):
                found[name] = obj
    assert {"TrainerError", "CheckpointError", "NonFiniteError", "ScheduleError", "FinetuneError", "DataError",
            "LayerNotFoundError", "LossInputError", "CLIError", "StateFormatError"} <= set(found)  # fmt: skip
    for name, cls in found.items():
        assert issubclass(cls, CallbacksKitError), f"{name} does not derive from CallbacksKitError"
        assert issubclass(cls, ValueError), f"{name} is no longer a ValueError"
        assert cls.__module__ == "callbacks_kit.errors", f"{name} is defined in {cls.__module__}, not in errors.py"


def test_the_cli_turns_any_package_error_into_one_line_and_status_2(capsys, monkeypatch):
    from callbacks_kit import cli
    from callbacks_kit.errors import StateFormatError

    def fail(args):
        raise StateFormatError("a made-up failure; the fix is named here")

    monkeypatch.setattr(cli.inspect, "run", fail)
    assert cli.main(["inspect", "somewhere"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "callbacks-kit inspect: error: a made-up failure; the fix is named here"


def test_the_layers_place_a_package_init_apart_from_its_modules():
    names = ["callbacks_kit.callbacks", "callbacks_kit.callbacks.base", "callbacks_kit.callbacks.ema",
             "callbacks_kit.checkpoint.store", "callbacks_kit.cli.train", "callbacks_kit"]  # fmt: skip
    assert [LAYERS[layer_of(name)][0] for name in names] == ["loop", "loop", "callbacks", "machinery", "cli", "api"]
