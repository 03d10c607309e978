"""Generate docs/api.md from the docstrings and signatures of callbacks_kit's public API.

    python scripts/gen_api_docs.py           # rewrite docs/api.md
    python scripts/gen_api_docs.py --check   # exit 1 when docs/api.md is not what this would write

The public API is the package's `__all__` plus the submodules users import from (`MODULES`).
A submodule without `__all__` exports the classes and functions it defines whose names do
not start with "_", and its UPPER_CASE constants. Google-style sections of the docstrings
(Args, Attributes, Returns, Raises) become tables and lists; each argument's default comes
from the signature, so it cannot disagree with the code. The output depends only on the
code: no dates, no memory addresses, no machine paths.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import importlib
import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "api.md"
PACKAGE = "callbacks_kit"

# (module, one-line description), in the order they appear in api.md.
MODULES: list[tuple[str, str]] = [
    ("callbacks_kit", "`from callbacks_kit import ...`: the trainer, the built-in callbacks and helpers."),
    ("callbacks_kit.callbacks", "The callbacks package: the built-in callbacks, and the pieces a custom one may need."),
    ("callbacks_kit.finetune", "Freezing, param groups by module name, head replacement and local weights."),
    ("callbacks_kit.losses", "Segmentation and imbalance losses from logits: Dice, Jaccard (IoU), Focal, BCE-Dice."),
    (
        "callbacks_kit.data",
        "The built-in shapes dataset, ImageFolder and CSV loading (`--labels FILE.csv --images DIR`), transforms, "
        "image files and loaders.",
    ),
    ("callbacks_kit.deploy", "Using a trained run: `run.json`, predict, evaluate, export."),
    ("callbacks_kit.metrics", "Built-in metrics: `(outputs, targets) -> scalar tensor`."),
    ("callbacks_kit.hooks", "Forward hooks that remove themselves."),
    ("callbacks_kit.layers", "Choosing layers by name, with helpful errors and defaults."),
    ("callbacks_kit.state", "The trainer's shared state: progress, running loss sums, where a resume continues."),
    ("callbacks_kit.errors", "Every error of the package, under `CallbacksKitError`."),
    ("callbacks_kit.inspection.event_report", "What a TensorBoard run contains (`callbacks-kit inspect`)."),
]

# Top-level names shown first, in this order; other names follow (callbacks, then the rest).
TRAINER_NAMES = ["Trainer", "TrainState", "TrainerError"]
CALLBACK_ORDER = [
    "Callback",
    "ProgressBar",
    "TensorBoardLogger",
    "WeightHistograms",
    "KernelGrid",
    "FeatureMaps",
    "GradCAM",
    "ConfusionMatrix",
    "LearningRateScheduler",
    "FreezeUnfreeze",
    "ModelCheckpoint",
    "EarlyStopping",
    "TerminateOnNaN",
    "PreemptionHandler",
]
SECTION = re.compile(r"^(Args|Arguments|Attributes|Returns|Yields|Raises):\s*$")
ITEM = re.compile(r"^(\*{0,2}[A-Za-z_][\w.]*)(?:\s*\([^)]*\))?:\s*(.*)$")
WRAP_AT = 88  # signatures longer than this get one parameter per line


# ------------------------------------------------------------------------------ what is public
@dataclasses.dataclass
class Entry:
    """One documented object: its public name, the object, and its kind."""

    name: str  # e.g. "callbacks_kit.finetune.param_groups"
    obj: Any
    kind: str  # "class", "exception", "function" or "constant"


def is_exception(obj: Any) -> bool:
    """True for exception classes."""
    return inspect.isclass(obj) and issubclass(obj, BaseException)


def kind_of(obj: Any) -> str:
    """The entry kind: exception, class, function or constant."""
    if is_exception(obj):
        return "exception"
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "constant"


def module_constants(module: ModuleType) -> list[str]:
    """UPPER_CASE names assigned at the top level of the module's own source, in order."""
    tree = ast.parse(inspect.getsource(module))
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        for target in targets:
            elements = target.elts if isinstance(target, ast.Tuple) else [target]
            names += [t.id for t in elements if isinstance(t, ast.Name) and re.fullmatch(r"[A-Z][A-Z0-9_]*", t.id)]
    return names


def source_line(obj: Any) -> int:
    """Line of the definition, to keep a module's names in source order."""
    try:
        return inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        return 0


def public_names(module: ModuleType) -> list[str]:
    """The module's `__all__`, or the names it defines: constants first, then in source order."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    defined = [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module.__name__
    ]
    defined.sort(key=lambda name: source_line(getattr(module, name)))
    return module_constants(module) + defined


def top_level_order(names: list[str], module: ModuleType) -> list[str]:
    """The package's names: the trainer, then the callbacks, then the rest alphabetically."""
    from callbacks_kit.callbacks.base import Callback

    first = [n for n in TRAINER_NAMES if n in names]
    callbacks = [n for n in CALLBACK_ORDER if n in names]
    callbacks += sorted(
        n
        for n in names
        if n not in callbacks and inspect.isclass(getattr(module, n)) and issubclass(getattr(module, n), Callback)
    )
    rest = sorted((n for n in names if n not in first + callbacks), key=str.lower)
    return first + callbacks + rest


def collect() -> list[tuple[str, str, list[Entry], list[tuple[str, str]]]]:
    """Per module: (name, description, entries documented there, [(name, link target)] documented elsewhere)."""
    seen: dict[int, str] = {}  # id of a class or function -> the public name it is documented under
    result = []
    for module_name, description in MODULES:
        module = importlib.import_module(module_name)
        names = public_names(module)
        if module_name == PACKAGE:
            names = top_level_order(names, module)
        entries: list[Entry] = []
        elsewhere: list[tuple[str, str]] = []
        for name in names:
            obj = getattr(module, name)
            kind = kind_of(obj)
            full = f"{module_name}.{name}"
            if kind != "constant" and id(obj) in seen:
                elsewhere.append((name, seen[id(obj)]))
                continue
            if kind != "constant":
                seen[id(obj)] = full
            entries.append(Entry(full, obj, kind))
        result.append((module_name, description, entries, elsewhere))
    return result


def public_members(cls: type) -> list[tuple[str, Any]]:
    """Public methods and properties a class defines itself (or inherits from a non-library base).

    Overrides of `Callback` events and state methods without a docstring of their own are
    left out: they are documented once, on `Callback`.
    """
    from callbacks_kit.callbacks.base import Callback

    members: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for base in cls.__mro__:
        if not base.__module__.startswith(PACKAGE) or (base is Callback and cls is not Callback):
            continue
        for name, value in vars(base).items():
            if name.startswith("_") or name in seen:
                continue
            if not (inspect.isfunction(value) or isinstance(value, (property, staticmethod, classmethod))):
                continue
            seen.add(name)
            function = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
            overrides_callback = cls is not Callback and issubclass(cls, Callback) and hasattr(Callback, name)
            if overrides_callback and not (function.__doc__ or "").strip():
                continue
            members.append((name, value))
    members.sort(key=lambda item: (item[0] in ("state_key", "state_dict", "load_state_dict"), source_order(item[1])))
    return members


def source_order(member: Any) -> int:
    """Source line of a method, property, staticmethod or classmethod."""
    function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
    return source_line(function)


def overridden_events(cls: type) -> list[str]:
    """The callback events a Callback subclass implements, in the order they fire."""
    from callbacks_kit.callbacks.base import EVENTS, Callback

    return [
        event
        for event in EVENTS
        if any(event in vars(base) for base in cls.__mro__ if base is not Callback and issubclass(base, Callback))
    ]


# ------------------------------------------------------------------------------ rendering
class _Raw:
    """An annotation rendered as its source text (annotations are strings under PEP 563)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def annotation_text(annotation: Any) -> str:
    """An annotation as it reads in the source."""
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


def default_text(value: Any) -> str:
    """A default value's repr, without memory addresses (the output must be deterministic)."""
    if inspect.isfunction(value) or inspect.isclass(value):
        return value.__qualname__
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


def signature_of(obj: Any) -> inspect.Signature | None:
    """The call signature (a class: its constructor without self), or None."""
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def format_signature(name: str, sig: inspect.Signature, prefix: str = "") -> str:
    """`prefix name(params) -> ret`, one parameter per line when it is long."""
    parts: list[str] = []
    kinds = [p.kind for p in sig.parameters.values()]
    for index, param in enumerate(sig.parameters.values()):
        if param.kind is param.KEYWORD_ONLY and inspect.Parameter.VAR_POSITIONAL not in kinds[:index]:
            if index == 0 or kinds[index - 1] is not param.KEYWORD_ONLY:
                parts.append("*")
        text = param.name
        if param.kind is param.VAR_POSITIONAL:
            text = "*" + text
        elif param.kind is param.VAR_KEYWORD:
            text = "**" + text
        if param.annotation is not param.empty:
            text += f": {annotation_text(param.annotation)}"
        if param.default is not param.empty:
            equals = " = " if param.annotation is not param.empty else "="
            text += equals + default_text(param.default)
        parts.append(text)
        if param.kind is param.POSITIONAL_ONLY and (
            index + 1 == len(kinds) or kinds[index + 1] is not param.POSITIONAL_ONLY
        ):
            parts.append("/")
    returns = ""
    if sig.return_annotation is not sig.empty and annotation_text(sig.return_annotation) != "None":
        returns = f" -> {annotation_text(sig.return_annotation)}"
    one_line = f"{prefix}{name}({', '.join(parts)}){returns}"
    if len(one_line) <= WRAP_AT or not parts:
        return one_line
    body = "".join(f"    {part},\n" for part in parts)
    return f"{prefix}{name}(\n{body}){returns}"


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").strip()


def split_sections(doc: str) -> Iterator[tuple[str | None, list[str]]]:
    """(None, body lines) and (section name, indented lines) in order."""
    lines = doc.splitlines()
    body: list[str] = []
    index = 0
    while index < len(lines):
        match = SECTION.match(lines[index])
        if not match:
            body.append(lines[index])
            index += 1
            continue
        if body:
            yield None, body
            body = []
        index += 1
        section: list[str] = []
        while index < len(lines) and (not lines[index].strip() or lines[index].startswith((" ", "\t"))):
            section.append(lines[index])
            index += 1
        while section and not section[-1].strip():
            section.pop()
        yield match.group(1), section
    if body:
        yield None, body


def section_items(lines: list[str]) -> list[tuple[str, str]]:
    """`name: text` items of an Args/Attributes/Raises section, continuation lines joined."""
    texts = [line for line in lines if line.strip()]
    if not texts:
        return []
    indent = min(len(line) - len(line.lstrip()) for line in texts)
    items: list[tuple[str, str]] = []
    for line in texts:
        stripped = line[indent:]
        match = ITEM.match(stripped) if not stripped.startswith((" ", "\t")) else None
        if match:
            items.append((match.group(1), match.group(2).strip()))
        elif items:
            items[-1] = (items[-1][0], f"{items[-1][1]} {stripped.strip()}".strip())
        else:
            items.append(("", stripped.strip()))
    return items


def render_doc(doc: str, sig: inspect.Signature | None) -> list[str]:
    """A docstring as Markdown: text as it is, Google sections as tables and lists."""
    out: list[str] = []
    for section, lines in split_sections(doc):
        if section is None:
            text = "\n".join(lines).strip("\n")
            if text:
                out += [text, ""]
            continue
        items = section_items(lines)
        if section in ("Args", "Arguments"):
            out += ["| parameter | default | meaning |", "| --- | --- | --- |"]
            for name, text in items:
                param = sig.parameters.get(name.lstrip("*")) if sig is not None else None
                if param is None or param.default is param.empty:
                    default = "required" if param is not None and param.kind < param.VAR_POSITIONAL else ""
                else:
                    default = f"`{cell(default_text(param.default))}`"
                out.append(f"| `{name}` | {default} | {cell(text)} |")
            out.append("")
        elif section == "Attributes":
            out += ["| attribute | meaning |", "| --- | --- |"]
            out += [f"| `{name}` | {cell(text)} |" for name, text in items]
            out.append("")
        elif section == "Raises":
            out += ["**Raises:**", ""]
            out += [f"- `{name}`: {text}" if name else f"- {text}" for name, text in items]
            out.append("")
        else:  # Returns, Yields: free text
            text = " ".join(line.strip() for line in lines if line.strip())
            out += [f"**{section}:** {text}", ""]
    return out


def render_member(owner: str, name: str, member: Any) -> list[str]:
    """A method or property of a class."""
    if isinstance(member, property):
        function = member.fget
        sig = signature_of(function)
        returns = ""
        if sig is not None and sig.return_annotation is not sig.empty:
            returns = f": {annotation_text(sig.return_annotation)}"
        code = f"{name}{returns}  # property"
        sig = None
    else:
        function = getattr(member, "__func__", member)
        sig = signature_of(function)
        if sig is not None and not isinstance(member, staticmethod):
            params = list(sig.parameters.values())[1:]  # self or cls
            sig = sig.replace(parameters=params)
        code = format_signature(name, sig) if sig is not None else f"{name}(...)"
    out = [f"#### {owner}.{name}", "", "```python", code, "```", ""]
    out += render_doc(inspect.cleandoc(function.__doc__ or ""), sig)
    return out


def render_entry(entry: Entry) -> list[str]:
    """One class, exception, function or constant."""
    from callbacks_kit.callbacks.base import Callback

    obj, short = entry.obj, entry.name.rsplit(".", 1)[1]
    out = [f"### {entry.name}", ""]
    if entry.kind == "constant":
        return out + ["```python", f"{short} = {default_text(obj)}", "```", ""]
    sig = None if entry.kind == "exception" else signature_of(obj)
    if entry.kind in ("class", "exception"):
        bases = [b for b in obj.__bases__ if b is not object]
        base_text = f"({', '.join(b.__name__ for b in bases)})" if bases else ""
        code = f"class {short}{base_text}"
        if entry.kind == "class" and sig is not None and sig.parameters:
            code += "\n" + format_signature(short, sig)
    else:
        code = format_signature(short, sig) if sig is not None else f"{short}(...)"
    out += ["```python", code, "```", ""]
    out += render_doc(inspect.cleandoc(obj.__doc__ or ""), sig)
    if entry.kind == "class" and issubclass(obj, Callback) and obj is not Callback:
        events = ", ".join(f"`{event}`" for event in overridden_events(obj)) or "none"
        stateful = any(
            "state_dict" in vars(base) for base in obj.__mro__ if base is not Callback and issubclass(base, Callback)
        )
        saved = "saved with every checkpoint" if stateful else "nothing saved in checkpoints"
        out += [f"`order = {obj.order}`; events: {events}; state: {saved}.", ""]
    if entry.kind == "class":
        for name, member in public_members(obj):
            out += render_member(short, name, member)
    return out


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def render() -> str:
    """The whole of docs/api.md."""
    modules = collect()
    out = [
        "# API reference",
        "",
        "<!-- Generated by scripts/gen_api_docs.py from the docstrings and signatures; do not edit. -->",
        "",
        "Generated from the code by `python scripts/gen_api_docs.py` (a test fails when this file is",
        "stale). For explanations and examples, read the [user guide](guide.md).",
        "",
    ]
    for module_name, _, entries, elsewhere in modules:
        links = [(e.name.rsplit(".", 1)[1], e.name) for e in entries] + elsewhere
        names = ", ".join(f"[`{name}`](#{slug(target)})" for name, target in links)
        out.append(f"- [`{module_name}`](#{slug(module_name)}): {names}")
    out.append("")
    for module_name, description, entries, elsewhere in modules:
        out += [f"## {module_name}", "", description, ""]
        if elsewhere:
            links = ", ".join(f"[`{name}`](#{slug(target)})" for name, target in elsewhere)
            out += [f"Also here, documented elsewhere on this page: {links}.", ""]
        for entry in entries:
            out += render_entry(entry)
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"
    return text


# ------------------------------------------------------------------------------ entry point
def main(argv: list[str] | None = None) -> int:
    """Write docs/api.md, or with --check say whether it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/api.md differs from the code")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="file to write or check (docs/api.md)")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else ""
        if current == text:
            print(f"{args.output} is up to date")
            return 0
        diff = difflib.unified_diff(
            current.splitlines(), text.splitlines(), "docs/api.md (on disk)", "docs/api.md (from the code)", lineterm=""
        )
        shown = list(diff)
        print("\n".join(shown[:60]) + ("\n..." if len(shown) > 60 else ""))
        print(f"\n{args.output} is stale: run `python scripts/gen_api_docs.py` and commit it", file=sys.stderr)
        return 1
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
