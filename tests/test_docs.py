"""The documentation agrees with the code.

- every public class, function and method has a docstring;
- docs/api.md is what scripts/gen_api_docs.py generates from the code;
- every `callbacks_kit...` name, `ClassName(` and `trainer.<attr>` the docs mention exists;
- every built-in callback has a guide section whose option table matches its constructor,
  in both directions and with the same defaults;
- every Python code block compiles, and its imports import;
- every relative link points to an existing file and anchor;
- every command-line option the docs mention exists;
- docs/design.md's layout lists every module of the package, each once;
- every budget the docs quote is the one the benchmark enforces, and quoted in one place;
- the guide's table of contents lists each section once.

Each failure names the file and the item, so the fix is obvious.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import importlib
import importlib.util
import inspect
import pkgutil
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import callbacks_kit
from callbacks_kit.callbacks.base import Callback

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
GUIDE = REPO / "docs" / "guide.md"
EXTERNAL_MODULES = (
    "builtins",
    "torch",
    "torch.nn",
    "torch.optim",
    "torch.optim.lr_scheduler",
    "torch.utils.data",
    "torch.utils.tensorboard",
    "torchvision.models",
    "torchvision.datasets",
    "accelerate",
    "accelerate.utils",
)
# Options of other tools that the docs show next to ours (launchers, TensorBoard, SLURM).
LAUNCHERS = (
    "accelerate launch",
    "torchrun",
    "torch.distributed.run",
    "tensorboard ",
    "pip ",
    "pytest",
    "srun",
    "sbatch",
)
OTHER_TOOLS_OPTIONS = {"--signal"}


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# ---------------------------------------------------------------------------------- Markdown
@dataclasses.dataclass
class Block:
    language: str
    code: str
    line: int


@dataclasses.dataclass
class Markdown:
    path: Path
    prose: list[tuple[int, str]]  # (line number, text) outside fenced blocks
    blocks: list[Block]

    @property
    def spans(self) -> list[tuple[int, str]]:
        """Inline code spans outside fenced blocks."""
        return [(n, span) for n, text in self.prose for span in re.findall(r"`([^`\n]+)`", text)]

    @property
    def code_texts(self) -> list[tuple[int, str]]:
        """Every piece of code: inline spans, and each line of every fenced block."""
        lines = [(b.line + i + 1, line) for b in self.blocks for i, line in enumerate(b.code.splitlines())]
        return self.spans + lines


@cache
def parse(path: Path) -> Markdown:
    prose: list[tuple[int, str]] = []
    blocks: list[Block] = []
    fence: str | None = None
    language, start, code = "", 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if fence is None and stripped.startswith(("```", "~~~")):
            fence, language, start, code = stripped[:3], stripped[3:].strip().lower(), number, []
        elif fence is not None and stripped.startswith(fence):
            blocks.append(Block(language, "\n".join(code), start))
            fence = None
        elif fence is not None:
            code.append(line)
        else:
            prose.append((number, line))
    assert fence is None, f"{rel(path)}: the code block opened at line {start} is never closed"
    return Markdown(path, prose, blocks)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@cache
def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result: set[str] = set()
    for _, line in parse(path).prose:
        match = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
        result.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", line))
    return result


def headings(path: Path) -> list[tuple[int, int, str]]:
    """(line number, level, text) of every heading."""
    result = []
    for number, line in parse(path).prose:
        match = re.match(r"^(#{1,6})\s+(.*?)\s*$", line)
        if match:
            result.append((number, len(match.group(1)), match.group(2)))
    return result


# ---------------------------------------------------------------------------------- helpers
def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_api_docs", REPO / "scripts" / "gen_api_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_api_docs"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@cache
def package_modules() -> list[ModuleType]:
    names = [m.name for m in pkgutil.walk_packages(callbacks_kit.__path__, "callbacks_kit.")]
    return [callbacks_kit, *(importlib.import_module(name) for name in sorted(names))]


def resolve(dotted: str) -> Any:
    """The object a dotted `callbacks_kit...` path names (raises when there is none)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def builtin_callbacks() -> list[type[Callback]]:
    return [
        obj
        for name in callbacks_kit.__all__
        if inspect.isclass(obj := getattr(callbacks_kit, name)) and issubclass(obj, Callback) and obj is not Callback
    ]


# ---------------------------------------------------------------------------------- (a) docstrings
def own_docstring(obj: Any) -> str:
    """A class's own docstring (dataclasses get a generated `Name(fields)` one: not a docstring)."""
    doc = (obj.__doc__ or "").strip() if inspect.isclass(obj) else (inspect.getdoc(obj) or "").strip()
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
        return ""
    return doc


def test_every_public_class_function_and_method_has_a_docstring() -> None:
    missing = []
    for module in package_modules():
        for name, obj in vars(module).items():
            if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if obj.__module__ != module.__name__:
                continue  # imported: checked where it is defined
            if not own_docstring(obj):
                missing.append(f"{module.__name__}.{name}")
            if not inspect.isclass(obj):
                continue
            for member_name, member in vars(obj).items():
                if member_name.startswith("_"):
                    continue
                if not (inspect.isfunction(member) or isinstance(member, (property, staticmethod, classmethod))):
                    continue
                # getdoc follows the MRO: an override of a documented method (a Callback event) is documented.
                if not (inspect.getdoc(getattr(obj, member_name)) or "").strip():
                    missing.append(f"{module.__name__}.{name}.{member_name}")
    assert not missing, "public objects without a docstring:\n  " + "\n  ".join(missing)


# ---------------------------------------------------------------------------------- api.md
def test_api_reference_is_generated_from_the_current_code() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_api_docs.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, (
        "docs/api.md is stale: run `python scripts/gen_api_docs.py` and commit docs/api.md\n"
        + result.stdout[-4000:]
        + result.stderr[-2000:]
    )


def test_api_reference_covers_every_public_name() -> None:
    generator = load_generator()
    text = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^#{3,4} (\S+)$", text, flags=re.M))
    missing = [f"callbacks_kit.{name}" for name in callbacks_kit.__all__ if f"callbacks_kit.{name}" not in documented]
    for _, _, entries, _ in generator.collect():
        missing += [entry.name for entry in entries if entry.name not in documented]
    assert not missing, "docs/api.md has no entry for: " + ", ".join(missing)


def test_generator_renders_google_sections_with_defaults_from_the_signature() -> None:
    generator = load_generator()

    def example(alpha: int, beta: str = "b") -> int:
        """Summary.

        Args:
            alpha: The first, on
                two lines.
            beta: The second.

        Returns:
            A number.

        Raises:
            ValueError: when it is bad.
        """
        return alpha

    lines = generator.render_doc(inspect.cleandoc(example.__doc__), inspect.signature(example))
    assert "| `alpha` | required | The first, on two lines. |" in lines
    assert "| `beta` | `'b'` | The second. |" in lines
    assert "**Returns:** A number." in lines
    assert "- `ValueError`: when it is bad." in lines


# ---------------------------------------------------------------------------------- (b) names
IMPORT_LINE = re.compile(r"from\s+(callbacks_kit[\w.]*)\s+import\s+([\w, ]+)$")
IMPORT_PARENS = re.compile(r"from\s+(callbacks_kit[\w.]*)\s+import\s+\(([^)]*)\)")


def test_every_callbacks_kit_name_in_the_docs_resolves() -> None:
    bad = []
    for path in DOCS:
        doc = parse(path)
        imports = []
        for number, text in doc.code_texts:
            for dotted in re.findall(r"\bcallbacks_kit(?:\.[A-Za-z_]\w*)+", text):
                try:
                    resolve(dotted)
                except (ImportError, AttributeError):
                    bad.append(f"{rel(path)}:{number}: {dotted}")
            imports += [(number, found) for found in IMPORT_LINE.findall(text)]
        for block in doc.blocks:  # imports in parentheses, over several lines
            imports += [(block.line, found) for found in IMPORT_PARENS.findall(block.code)]
        for number, (module, names) in imports:
            for name in filter(None, (n.strip() for n in re.sub(r"#.*", "", names).split(","))):
                if not hasattr(importlib.import_module(module), name):
                    bad.append(f"{rel(path)}:{number}: from {module} import {name}")
    assert not bad, "names in the docs that do not exist:\n  " + "\n  ".join(sorted(set(bad)))


def known_class_names() -> set[str]:
    names = {n for m in package_modules() for n, o in vars(m).items() if inspect.isclass(o) or callable(o)}
    for module_name in EXTERNAL_MODULES:
        names |= {n for n in dir(importlib.import_module(module_name)) if not n.startswith("_")}
    return names


def test_every_class_called_in_the_docs_exists() -> None:
    known = known_class_names()
    bad = []
    for path in DOCS:
        doc = parse(path)
        local = {n for b in doc.blocks for n in re.findall(r"\bclass\s+(\w+)", b.code)}
        python = [(b.line, b.code) for b in doc.blocks if b.language in ("python", "py")]
        for number, text in doc.spans + python:
            for name in re.findall(r"(?<![\w.])([A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*)\(", text):
                if name not in known and name not in local:
                    bad.append(f"{rel(path)}:{number}: {name}(")
    assert not bad, "classes the docs call that exist nowhere:\n  " + "\n  ".join(sorted(set(bad)))


@pytest.fixture(scope="module")
def tiny_trainer() -> Any:
    import torch
    from torch import nn

    from callbacks_kit import Trainer

    model = nn.Linear(2, 2)
    return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), progress_bar=False)


def test_every_trainer_attribute_in_the_docs_exists(tiny_trainer: Any) -> None:
    state_fields = {f.name for f in dataclasses.fields(type(tiny_trainer.state))} | set(dir(tiny_trainer.state))
    bad = []
    for path in DOCS:
        doc = parse(path)
        texts = doc.spans + [(b.line, b.code) for b in doc.blocks if b.language in ("python", "py")]
        for number, text in texts:
            for name in re.findall(r"\btrainer\.state\.(\w+)", text):
                if name not in state_fields:
                    bad.append(f"{rel(path)}:{number}: trainer.state.{name}")
            for name in re.findall(r"\btrainer\.(?!state\.)(\w+)", text):
                if not hasattr(tiny_trainer, name):
                    bad.append(f"{rel(path)}:{number}: trainer.{name}")
    assert not bad, "trainer attributes the docs mention that do not exist:\n  " + "\n  ".join(sorted(set(bad)))


# ---------------------------------------------------------------------------------- (c) options
def option_table(section: list[str]) -> dict[str, str]:
    """`{option: default}` from the rows of the section's table(s) whose first cell is `name`."""
    rows: dict[str, str] = {}
    for line in section:
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        match = re.fullmatch(r"`(\w+)`", cells[0]) if cells else None
        if match and len(cells) >= 3:
            rows[match.group(1)] = cells[1]
    return rows


def guide_section(name: str) -> list[str] | None:
    """The lines of the guide section whose heading names `name`, up to the next heading of its level."""
    lines = GUIDE.read_text(encoding="utf-8").splitlines()
    found = headings(GUIDE)
    for index, (number, level, text) in enumerate(found):
        if re.search(rf"(?<![\w`]){name}(?!\w)|`{name}`", text):
            end = next((n for n, lv, _ in found[index + 1 :] if lv <= level), len(lines) + 1)
            return lines[number : end - 1]
    return None


def default_matches(documented: str, actual: Any) -> bool:
    text = documented.strip().strip("`").replace("\\|", "|")
    if actual is inspect.Parameter.empty:
        return text == "required"
    try:
        if ast.literal_eval(text) == actual:
            return True
    except (ValueError, SyntaxError):
        pass
    for module in package_modules():  # a named constant, e.g. IMAGENET_MEAN
        if text in vars(module) and vars(module)[text] == actual:
            return True
    return False


@pytest.mark.parametrize("callback", builtin_callbacks(), ids=lambda c: c.__name__)
def test_guide_documents_every_option_of_each_builtin_callback(callback: type[Callback]) -> None:
    name = callback.__name__
    section = guide_section(name)
    assert section is not None, f"docs/guide.md has no section (a heading naming {name}) for the callback {name}"
    documented = option_table(section)
    params = {
        p.name: p.default
        for p in inspect.signature(callback).parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    unknown = sorted(set(documented) - set(params))
    undocumented = sorted(set(params) - set(documented))
    assert not unknown, f"docs/guide.md, section {name}: options {unknown} are not parameters of {name}()"
    assert not undocumented, f"docs/guide.md, section {name}: parameters {undocumented} of {name}() are not documented"
    wrong = [
        f"{option}: documented {documented[option]}, actual {params[option]!r}"
        for option in params
        if not default_matches(documented[option], params[option])
    ]
    assert not wrong, f"docs/guide.md, section {name}: wrong defaults: " + "; ".join(wrong)
    body = "\n".join(section)
    assert re.search(rf"```python\n(?:.*\n)*?.*\b{name}\(", body), f"docs/guide.md, section {name}: no example"


# ---------------------------------------------------------------------------------- (d) code blocks
# api.md is left out: its code blocks are signatures, generated from code that runs.
PYTHON_DOCS = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "api.md")]


@pytest.mark.parametrize("path", PYTHON_DOCS, ids=rel)
def test_python_code_blocks_compile_and_their_imports_import(path: Path) -> None:
    for block in parse(path).blocks:
        if block.language not in ("python", "py"):
            continue
        where = f"{rel(path)}, code block at line {block.line}"
        try:
            tree = compile(block.code, where, "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
        except SyntaxError as exc:
            pytest.fail(f"{where} does not compile: {exc}")
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                statement = ast.unparse(node)
                try:
                    exec(compile(ast.Module([node], []), where, "exec"), {"__builtins__": builtins})
                except Exception as exc:
                    pytest.fail(f"{where}: `{statement}` fails: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------------- (e) links
def links(path: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in parse(path).prose:
        line = re.sub(r"`[^`]*`", "", line)  # a link inside code is not a link
        found += [(number, target) for target in re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", line)]
        found += [(number, target) for target in re.findall(r"<img[^>]*\ssrc=\"([^\"]+)\"", line)]
    return found


@pytest.mark.parametrize("path", DOCS, ids=rel)
def test_relative_links_point_to_existing_files_and_anchors(path: Path) -> None:
    bad = []
    for number, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # http:, https:, mailto:
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            bad.append(f"{rel(path)}:{number}: {target} ({file_part} does not exist)")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            bad.append(f"{rel(path)}:{number}: {target} (no heading #{anchor} in {rel(destination)})")
    assert not bad, "broken links:\n  " + "\n  ".join(bad)


# ---------------------------------------------------------------------------------- CLI options
@cache
def cli_help() -> dict[str, set[str]]:
    """Options in the output of `callbacks-kit <command> --help`, per command."""
    from callbacks_kit.cli import build_parser

    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if a.choices and isinstance(a.choices, dict)]
    return {
        name: set(re.findall(r"(?<![\w-])--[a-z][\w-]*", sub.format_help())) for name, sub in subparsers.choices.items()
    }


@cache
def script_options() -> dict[str, set[str]]:
    """`--options` each script and example defines with add_argument (also in the `benchmarks` modules it imports)."""
    found = {}
    for folder in ("scripts", "examples"):
        for path in sorted((REPO / folder).glob("*.py")):
            text = path.read_text(encoding="utf-8")
            for module in re.findall(r"^from (benchmarks(?:\.\w+)*) import", text, re.MULTILINE):
                text += (REPO / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
            found[rel(path)] = set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", text))
    return found


def options(text: str) -> list[str]:
    """The `--options` in a piece of text, without `=value`."""
    return [o.split("=")[0] for o in re.findall(r"(?<![\w-])--[a-z][\w=-]*", text)]


def option_problems(text: str) -> list[str]:
    """Options in one command line or code span that the command they follow does not have."""
    help_ = cli_help()
    command = re.search(r"callbacks[-_]kit\s+(" + "|".join(cli_help()) + r")\b", text)
    if command:
        known = help_[command.group(1)]
        return [f"{o} (callbacks-kit {command.group(1)})" for o in options(text[command.end() :]) if o not in known]
    script = re.search(r"((?:scripts|examples)/\w+\.py)", text)
    if script:
        defined = script_options().get(script.group(1))
        if defined is None:
            return [f"{script.group(1)} (no such script)"]
        return [f"{o} ({script.group(1)})" for o in options(text[script.end() :]) if o not in defined]
    if any(launcher in text for launcher in LAUNCHERS):
        return []  # another tool's options
    if text.lstrip().startswith("--"):  # an option on its own, e.g. `--data DIR`
        everywhere = set().union(*help_.values(), *script_options().values(), OTHER_TOOLS_OPTIONS)
        return [f"{o}" for o in options(text) if o not in everywhere]
    return []


def test_cli_options_in_the_docs_exist() -> None:
    bad = []
    for path in DOCS:
        for number, text in parse(path).code_texts:
            bad += [f"{rel(path)}:{number}: {problem}" for problem in option_problems(text)]
    assert not bad, "command-line options in the docs that do not exist:\n  " + "\n  ".join(bad)


def test_option_check_catches_a_wrong_option() -> None:
    assert option_problems("callbacks-kit train --epochs 3 --no-such-option") == [
        "--no-such-option (callbacks-kit train)"
    ]
    assert option_problems("--data DIR") == []
    assert option_problems("accelerate launch --multi_gpu -m callbacks_kit train --batch-size 64") == []


# ------------------------------------------------------------------ design.md's layout, budgets, the guide's contents
DESIGN = REPO / "docs" / "design.md"
PERFORMANCE = REPO / "docs" / "performance.md"


def layout_listing() -> list[str]:
    """The module paths design.md's "Every module, once" block names, in order (relative to callbacks_kit/)."""
    text = DESIGN.read_text()
    block = text.split("Every module, once:", 1)[1].split("```", 2)[1]
    listed, folder = [], ""
    for line in block.splitlines():
        match = re.match(r"^( *)([\w.]+(?:\.py|/))", line)
        if not match or match.group(2) == "callbacks_kit/":
            continue
        depth, name = len(match.group(1)) // 2, match.group(2)
        if name.endswith("/"):
            folder = name if depth == 1 else folder
        else:
            listed.append(folder + name if depth == 2 else name)
    return listed


def test_design_md_lists_every_module_of_the_package_once():
    package = Path(callbacks_kit.__file__).parent
    modules = sorted(str(path.relative_to(package)) for path in package.rglob("*.py"))
    listed = layout_listing()
    twice = sorted({name for name in listed if listed.count(name) > 1})
    assert not twice, f"docs/design.md's layout lists these modules more than once: {twice}"
    assert sorted(listed) == modules, (
        f"docs/design.md's layout misses {sorted(set(modules) - set(listed))} "
        f"and lists modules that do not exist: {sorted(set(listed) - set(modules))}"
    )


def _budget_limits() -> dict[str, float]:
    """Each budget the benchmark enforces, by a phrase its row in performance.md's table contains."""
    sys.path.insert(0, str(REPO))
    try:
        from benchmarks import (
            checkpoints,
            common,
            end_to_end,
            error_views,
            inputs,
            profiler,
            segmentation_views,
            startup,
            training_views,
        )
    finally:
        sys.path.remove(str(REPO))
    return {
        "tiny MLP": common.LOOP_BUDGETS["tiny MLP"],
        "small CNN": common.LOOP_BUDGETS["small CNN"],
        "checkpoint save": checkpoints.ASYNC_STALL_BUDGET,
        "one copy of the state": checkpoints.ASYNC_FLOOR_BUDGET,
        "end to end": end_to_end.END_TO_END_BUDGET,
        "each inspection callback": common.CALLBACK_SHARE_BUDGET,
        "each error-analysis view": error_views.VIEW_SHARE_BUDGET,
        "device histograms": common.HISTOGRAM_SPEEDUP_BUDGET,
        "host-device syncs": 0.0,
        "`EMA` update": common.EMA_SHARE_BUDGET,
        "LayerStats, BatchGrid, live hparams": training_views.VIEW_SHARE_BUDGET,
        "`callbacks-kit --help`": startup.STARTUP_BUDGET,
        "`Profiler` outside its window": profiler.PROFILER_IDLE_BUDGET,
        "waiting for data": inputs.DATA_WAIT_AGREEMENT,
        "each segmentation view": segmentation_views.VIEW_SHARE_BUDGET,
    }


def _limit(cell: str) -> float:
    """`≤ 1.02x` -> 1.02, `≤ 5%` -> 0.05, `≥ 4x faster` -> 4.0, `0` -> 0.0."""
    match = re.search(r"(\d+(?:\.\d+)?)\s*(%?)", cell)
    assert match, f"no number in the limit {cell!r}"
    return float(match.group(1)) / (100 if match.group(2) else 1)


def test_every_budget_in_performance_md_is_the_one_the_benchmark_enforces():
    rows = [line.split("|")[1:3] for line in PERFORMANCE.read_text().split("\n\n", 3)[2].splitlines()[2:]]
    limits = _budget_limits()
    seen = set()
    for name, cell in rows:
        keys = [key for key in limits if key in name]
        assert len(keys) == 1, f"performance.md's budget row {name.strip()!r} matches {keys} of {sorted(limits)}"
        assert _limit(cell) == pytest.approx(limits[keys[0]]), (
            f"performance.md says {cell.strip()} for {keys[0]!r}; the benchmark enforces {limits[keys[0]]}"
        )
        seen.add(keys[0])
    assert seen == set(limits), f"budgets the benchmark enforces but performance.md's table omits: {set(limits) - seen}"


def test_budgets_are_quoted_in_performance_md_alone():
    quoted = re.compile(r"budget[^.|]*?(?:≤|≥|\b\d+(?:\.\d+)?\s*(?:x\b|%))", re.IGNORECASE)
    others = [
        REPO / "README.md",
        REPO / "CONTRIBUTING.md",
        *(p for p in DOCS if p.name not in ("performance.md", "api.md")),
    ]
    hits = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in dict.fromkeys(others)
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if quoted.search(line)
    ]
    assert not hits, "a budget's value quoted outside docs/performance.md's table (link to it instead):\n" + "\n".join(
        hits
    )


def test_the_guides_table_of_contents_lists_each_section_once():
    text = GUIDE.read_text()
    contents = text.split("\n## ", 1)[0]
    anchors = re.findall(r"^- \[[^\]]+\]\(#([\w-]+)\)", contents, flags=re.MULTILINE)
    twice = sorted({a for a in anchors if anchors.count(a) > 1})
    assert not twice, f"the guide's contents list these sections more than once: {twice}"
    sections = [slug(title) for title in re.findall(r"^## (.+)$", text, flags=re.MULTILINE)]
    assert sorted(anchors) == sorted(sections), (
        f"sections missing from the contents: {sorted(set(sections) - set(anchors))}; "
        f"entries without a section: {sorted(set(anchors) - set(sections))}"
    )
