"""What `train` checks before it writes into a run folder: a run is continued only with --resume, and as it was.

A new run in a folder whose run saved checkpoints would replace its `best.safetensors` and
`run.json` and mix two runs' event files; a resume on other classes (or the same names in another
order) would reassign every output; another input size or another frozen set would change
the run without a word. Each is refused naming the flag, before any data is read (the
folder) or any step is trained (the resume). A checkpoint knows what it was trained on from
the state `WriteRunInfo` saves in it; one saved before that state existed is compared with
the `run.json` of its run folder.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

from callbacks_kit.callbacks.freeze_unfreeze import FreezeUnfreeze
from callbacks_kit.checkpoint.format import BEST_WEIGHTS, STATE_JSON
from callbacks_kit.checkpoint.restore import resolve_checkpoint
from callbacks_kit.checkpoint.store import list_checkpoints, read_pointer
from callbacks_kit.deploy.run_info import RUN_INFO, RunInfo, WriteRunInfo, class_change_message
from callbacks_kit.errors import CheckpointError, CLIError

EVENT_FILES = "events.out.tfevents.*"


def checkpoint_folder(args: argparse.Namespace, run_dir: str | Path) -> Path:
    """Where the run's checkpoints go: --checkpoint-dir, else `<run folder>/checkpoints`."""
    return Path(args.checkpoint_dir) if args.checkpoint_dir else Path(run_dir) / "checkpoints"


def check_new_run(args: argparse.Namespace) -> None:
    """Refuse a new run (no --resume) where a run saved checkpoints: its --log-dir, or a --checkpoint-dir.

    The checkpoints of a --log-dir are those its `run.json` names (else `<log dir>/checkpoints`).
    A folder holding only what an attempt that saved nothing left (its `run.json`, event
    files: a run refused at fit start, or killed before its first save) is used, with a warning.
    """
    if args.resume:
        return
    if args.checkpoint_dir and _holds_checkpoints(Path(args.checkpoint_dir)):
        folder = Path(args.checkpoint_dir)
        raise CLIError(_held(f"--checkpoint-dir {folder}", folder, "--checkpoint-dir"))
    if not args.log_dir:  # a default --log-dir is a new, dated folder
        return
    run_dir = Path(args.log_dir)
    saved = _run_json(run_dir).get("checkpoint_dir")
    folder = run_dir / saved if isinstance(saved, str) and saved else run_dir / "checkpoints"
    if _holds_checkpoints(folder) or _holds_checkpoints(run_dir / "checkpoints"):
        raise CLIError(_held(f"--log-dir {run_dir}", folder, "--log-dir"))
    events = list(run_dir.glob(EVENT_FILES)) if run_dir.is_dir() else []
    if events or (run_dir / RUN_INFO).is_file():
        warnings.warn(
            f"--log-dir {run_dir} holds what an earlier attempt left ({len(events)} TensorBoard event file(s)"
            f"{', run.json' if (run_dir / RUN_INFO).is_file() else ''}) but no checkpoint: this run writes beside "
            "them; pass a new --log-dir to keep the runs apart",
            stacklevel=2,
        )


def _holds_checkpoints(folder: Path) -> bool:
    return bool(read_pointer(folder) or list_checkpoints(folder) or (folder / BEST_WEIGHTS).is_file())


def _held(where: str, checkpoints: Path, flag: str) -> str:
    return (
        f"{where} already holds a run (checkpoints in {checkpoints}); a new run there would replace its "
        "best.safetensors and run.json and mix two runs in one TensorBoard folder. Continue it with --resume last, "
        f"or pass a new {flag} (to start from its weights: --init-from {checkpoints})"
    )


def check_resume(args: argparse.Namespace, info: RunInfo, folder: Path) -> None:
    """Refuse --resume of a checkpoint trained on other classes, at another --image-size, or frozen otherwise.

    Nothing is refused here when there is nothing to resume yet, or when the checkpoint
    cannot be read: `restore` reports that, with the checkpoints there are.
    """
    if not args.resume:
        return
    try:
        path = resolve_checkpoint(args.resume, folder)
    except CheckpointError:
        return
    if path is None:
        return
    states = _callback_states(path)
    saved = (states or {}).get(WriteRunInfo.__qualname__) or _run_json(path.parent.parent, args.log_dir)
    source = str(path.parent if args.resume == "last" else path)
    if isinstance(saved.get("classes"), list) and saved["classes"] != list(info.classes):
        new_run = f"start a new run from its weights on this data: --init-from {source} with a new --log-dir"
        raise CLIError(class_change_message(saved["classes"], list(info.classes), new_run))
    size = saved.get("image_size")
    if isinstance(size, int) and size != info.image_size:
        raise CLIError(
            f"this run would train at {info.image_size} px (--image-size), and the checkpoint {path} was trained at "
            f"{size} px: another input size changes the run. Resume with "
            f"--image-size {size}, or start a new run at {info.image_size} px from its weights: --init-from {source} "
            "with a new --log-dir"
        )
    if states is not None:
        frozen_then = FreezeUnfreeze.__qualname__ in states
        frozen_now = bool(args.freeze_backbone or args.unfreeze_at)
        if frozen_then != frozen_now:
            then = "with a frozen backbone (--freeze-backbone or --unfreeze-at)" if frozen_then else "unfrozen"
            now = "freeze the backbone" if frozen_now else "train it unfrozen"
            fix = "add the --freeze-backbone/--unfreeze-at it was trained with" if frozen_then else "drop them"
            raise CLIError(
                f"the checkpoint {path} was trained {then}, and these flags would {now} from here on; to resume the "
                f"run as it was, {fix}. For other settings, start a new run from its weights: --init-from {source} "
                "with a new --log-dir"
            )


def _callback_states(path: Path) -> dict[str, Any] | None:
    """The callback states saved in the checkpoint folder `path`; None when they cannot be read."""
    try:
        states = json.loads((path / STATE_JSON).read_text())["callbacks"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return states if isinstance(states, dict) else None


def _run_json(*folders: str | Path | None) -> dict[str, Any]:
    """The first readable `run.json` in `folders` as plain JSON ({} when none): for checkpoints older than its state."""
    for folder in folders:
        try:
            data = json.loads((Path(folder) / RUN_INFO).read_text()) if folder else None
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return data
    return {}
