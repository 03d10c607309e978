"""What a TensorBoard run contains, per plugin, read with TensorBoard's own EventAccumulator.

`callbacks-kit inspect RUN` prints it, for users without a browser; the tests use
`inspect_run()` to check what was written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import STORE_EVERYTHING_SIZE_GUIDANCE, EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader

from callbacks_kit.errors import CheckpointError

EVENT_PREFIX = "events.out.tfevents."
PLUGINS = ("scalars", "histograms", "images", "text", "graphs", "hparams", "custom_scalars")


def event_files(run: str | Path) -> list[Path]:
    """Every event file under `run` (a run folder or a folder of runs), sorted."""
    root = Path(run)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob(f"{EVENT_PREFIX}*") if p.is_file())


def load(path: str | Path) -> EventAccumulator:
    """An EventAccumulator over `path` (one folder's event files) holding every event (size guidance 0)."""
    accumulator = EventAccumulator(str(path), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    accumulator.Reload()
    return accumulator


def readable(path: Path) -> bool:
    """True when `path` starts with a whole TensorBoard record (TensorBoard's own reader, length and CRC checked).

    TensorBoard skips a file it cannot read without a word, so a damaged or foreign file would
    look like an empty run; a run killed mid-write still starts with a whole record.
    """
    return next(iter(RawEventFileLoader(str(path)).Load()), None) is not None


def last_step(run: str | Path) -> int:
    """The last step a run trained to: the largest of its `train/` sub-run's scalars, else of its own; 0 for none.

    The `train/` sub-run of a `TensorBoardLogger` run holds scalars only, so it is read quickly;
    events an interrupted run wrote past the point its resume restarted from do not count.
    """
    root = Path(run)
    for folder in (root / "train", root):
        if any(f.parent == folder for f in event_files(folder)):
            accumulator = load(folder)
            steps = [event.step for tag in accumulator.Tags()["scalars"] for event in accumulator.Scalars(tag)]
            if steps:
                return max(steps)
    return 0


def inspect_run(run: str | Path) -> dict[str, Any]:
    """A summary of `run` per sub-run folder (relative path, "." for the run itself) and plugin.

    `unreadable` lists the event files that hold no TensorBoard record (empty, damaged, or
    not event files); they are left out of the summary.

    A run of `TensorBoardLogger` has its splits' scalars in sub-runs (`train`, `validation`...).
    The hparams metrics are the values TensorBoard shows in each column: the latest scalar
    of the column's tag, in the sub-run its group names.

    Raises:
        FileNotFoundError: `run` holds no event file.
        CheckpointError: no event file under `run` can be read.
    """
    root = Path(run)
    files = event_files(root)
    if not files:
        raise FileNotFoundError(f"no TensorBoard event file ({EVENT_PREFIX}*) under {root}")
    unreadable = [f for f in files if not readable(f)]
    if len(unreadable) == len(files):
        raise CheckpointError(unreadable_message(unreadable) + "; there is nothing to report")
    folders = sorted({f.parent for f in files if f not in unreadable})
    runs = {str(folder.relative_to(root)) if root.is_dir() else ".": _inspect(load(folder)) for folder in folders}
    for name, report in runs.items():
        for column, (group, tag) in report["hparams"].pop("columns", {}).items():
            sub_run = runs.get(str(Path(name, group)) if group else name, {})
            report["hparams"]["metrics"][column] = sub_run.get("scalars", {}).get(tag, {}).get("last_value")
    return {
        "run": str(root),
        "event_files": [str(f) for f in files],
        "unreadable": [str(f) for f in unreadable],
        "runs": runs,
    }


def unreadable_message(files: list[Path] | list[str]) -> str:
    """What is wrong with event files that hold no TensorBoard record, naming them."""
    shown = ", ".join(map(str, files[:5])) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    return (
        f"{len(files)} event file(s) hold no TensorBoard record (empty, damaged, or not written by TensorBoard): "
        f"{shown}. TensorBoard skips them without a word; remove or replace them"
    )


def _inspect(acc: EventAccumulator) -> dict[str, Any]:
    tags = acc.Tags()
    report: dict[str, Any] = {}
    report["scalars"] = {}
    for tag in tags["scalars"]:
        events = acc.Scalars(tag)
        report["scalars"][tag] = {
            "count": len(events),
            "first_step": events[0].step,
            "last_step": events[-1].step,
            "last_value": events[-1].value,
        }
    report["histograms"] = {}
    for tag in tags["histograms"]:
        events = acc.Histograms(tag)
        last = events[-1].histogram_value
        report["histograms"][tag] = {
            "count": len(events),
            "steps": [e.step for e in events],
            "buckets": len(last.bucket),
            "num": int(last.num),
        }
    report["images"] = {}
    for tag in tags["images"]:
        events = acc.Images(tag)
        report["images"][tag] = {
            "count": len(events),
            "steps": [e.step for e in events],
            "width": events[-1].width,
            "height": events[-1].height,
        }
    report["text"] = {}
    for tag in _plugin_tags(acc, "text"):
        events = acc.Tensors(tag)
        text = events[-1].tensor_proto.string_val[0].decode("utf-8", "replace") if events else ""
        report["text"][tag] = {"count": len(events), "last_step": events[-1].step, "chars": len(text), "text": text}
    report["graphs"] = _graph(acc) if tags.get("graph") else {}
    report["hparams"] = _hparams(acc)
    report["custom_scalars"] = _layout(acc)
    return report


def _plugin_tags(acc: EventAccumulator, plugin: str) -> dict[str, bytes]:
    """`{tag: plugin content}` of one plugin; empty when the run has none of its summaries."""
    try:
        return acc.PluginTagToContent(plugin)
    except KeyError:
        return {}


def _graph(acc: EventAccumulator) -> dict[str, Any]:
    graph = acc.Graph()
    ops = sorted({node.op for node in graph.node})
    return {"nodes": len(graph.node), "ops": ops[:20]}


def _hparams(acc: EventAccumulator) -> dict[str, Any]:
    """The session's hparams (in the experiment's order), its status, and each metric column's `(group, tag)`.

    `inspect_run` turns the columns into `metrics`: `{display name: latest value or None}`.
    """
    if not _plugin_tags(acc, "hparams"):
        return {}
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    result: dict[str, Any] = {"hparams": {}, "metrics": {}, "status": None, "shown": [], "columns": {}}
    order: list[str] = []
    for content in _plugin_tags(acc, "hparams").values():
        data = HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            for name, value in data.session_start_info.hparams.items():
                result["hparams"][name] = getattr(value, value.WhichOneof("kind"))
        if data.HasField("experiment"):
            order = [info.name for info in data.experiment.hparam_infos]
            result["shown"] = [info.name for info in data.experiment.hparam_infos if info.differs]
            for info in data.experiment.metric_infos:
                result["columns"][info.display_name or info.name.tag] = (info.name.group, info.name.tag)
        if data.HasField("session_end_info"):
            result["status"] = Status.Name(data.session_end_info.status)
    ranked = {name: i for i, name in enumerate(order)}
    result["hparams"] = dict(sorted(result["hparams"].items(), key=lambda item: ranked.get(item[0], len(ranked))))
    return result


def _layout(acc: EventAccumulator) -> dict[str, Any]:
    if not _plugin_tags(acc, "custom_scalars"):
        return {}
    from tensorboard.plugins.custom_scalar.layout_pb2 import Layout

    layout: dict[str, Any] = {}
    for tag in _plugin_tags(acc, "custom_scalars"):
        proto = Layout.FromString(acc.Tensors(tag)[-1].tensor_proto.string_val[0])
        for category in proto.category:
            layout[category.title] = {
                chart.title: list(chart.multiline.tag) or list(chart.margin.series) for chart in category.chart
            }
    return layout


def format_report(report: dict[str, Any]) -> str:
    """The report as indented text, one section per plugin."""
    lines = [f"run {report['run']}: {len(report['event_files'])} event file(s)"]
    unreadable = set(report.get("unreadable", ()))
    lines += [f"  {path}" + ("  (unreadable: left out)" * (path in unreadable)) for path in report["event_files"]]
    for name, plugins in report["runs"].items():
        lines.append(f"\n[{name}]")
        for plugin in PLUGINS:
            content = plugins.get(plugin) or {}
            lines.append(f"  {plugin}: {len(content) if plugin not in ('graphs', 'hparams') else ''}".rstrip())
            lines += [f"    {line}" for line in _describe(plugin, content)]
    return "\n".join(lines)


def _describe(plugin: str, content: dict[str, Any]) -> list[str]:
    if plugin == "scalars":
        return [
            f"{tag}: {v['count']} steps ({v['first_step']}..{v['last_step']}), last {v['last_value']:.6g}"
            for tag, v in content.items()
        ]
    if plugin == "histograms":
        return [f"{tag}: {v['count']} steps {_steps(v['steps'])}, {v['buckets']} buckets" for tag, v in content.items()]
    if plugin == "images":
        return [
            f"{tag}: {v['count']} steps {_steps(v['steps'])}, {v['width']}x{v['height']}" for tag, v in content.items()
        ]
    if plugin == "text":
        return [f"{tag}: {v['count']} entries, {v['chars']} chars" for tag, v in content.items()]
    if plugin == "graphs":
        return [f"graph with {content['nodes']} nodes (ops: {', '.join(content['ops'])})"] if content else []
    if plugin == "hparams":
        if not content:
            return []
        values = ", ".join(f"{k}={v}" for k, v in content["hparams"].items())
        metrics = ", ".join(
            f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in content["metrics"].items()
        )
        shown = [f"shown first: {', '.join(content['shown'])}"] if content.get("shown") else []
        return [f"hparams: {values}", *shown, f"metrics: {metrics}", f"status: {content['status']}"]
    return [f"{category} / {chart}: {tags}" for category, charts in content.items() for chart, tags in charts.items()]


def _steps(steps: list[int]) -> str:
    return str(steps) if len(steps) <= 6 else f"[{steps[0]}, {steps[1]}, ..., {steps[-1]}]"
