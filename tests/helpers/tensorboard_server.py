"""A real TensorBoard server on a run folder, and what its hparams dashboard serves."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


@contextlib.contextmanager
def tensorboard_server(
    logdir: str | Path, timeout: float = 60, program: list[str] | None = None, env: dict[str, str] | None = None
) -> Iterator[str]:
    """`tensorboard --logdir logdir` on a free port (reloading every second); yields its base URL.

    `program` is how TensorBoard is started (default: this Python's `-m tensorboard.main`), `env` its environment.
    """
    program = program or [sys.executable, "-m", "tensorboard.main"]
    cmd = [*program, "--logdir", str(logdir), "--host", "127.0.0.1",
           "--port", "0", "--load_fast", "false", "--reload_interval", "1"]  # fmt: skip
    process = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        deadline, url = time.monotonic() + timeout, None
        assert process.stderr is not None
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line and process.poll() is not None:
                raise AssertionError(f"tensorboard exited with {process.returncode}")
            found = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            url = found.group(1) if found else None
        assert url is not None, "tensorboard did not say where it serves"
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def hparams_post(url: str, route: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST `body` to the hparams plugin's `route`, as TensorBoard's front end does."""
    request = urllib.request.Request(
        f"{url}data/plugin/hparams/{route}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def hparams_sessions(url: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The hparams dashboard's experiment and its sessions (hparams, metric values, status)."""
    experiment = hparams_post(url, "experiment", {"experimentName": ""})
    columns = [{"metric": m["name"]} for m in experiment.get("metricInfos", [])]
    columns += [{"hparam": h["name"]} for h in experiment.get("hparamInfos", [])]
    body = {"experimentName": "", "allowedStatuses": STATUSES, "colParams": columns, "startIndex": 0, "sliceSize": 100}
    groups = hparams_post(url, "session_groups", body).get("sessionGroups", [])
    return experiment, [{**session, "hparams": group["hparams"]} for group in groups for session in group["sessions"]]


def wait_for(condition: Callable[[], Any], timeout: float = 60, what: str = "the condition") -> Any:
    """Poll `condition()` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
