"""A real TensorBoard server on a run folder, and what its hparams dashboard serves."""

from __future__ import annotations

import contextlib
import functools
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


def tensorboard_order(tags: list[str] | set[str]) -> list[str]:
    """`tags` in the order TensorBoard's dashboards list them (its `compareTagNames`, in webfiles.zip).

    Characters compare one by one, numbers by value; `/`, `_` and digits sort before anything
    else. The scalars dashboard groups the sorted tags by the part before the first `/`.
    """

    def number_end(text: str, start: int) -> int:
        end = start
        while end < len(text) and (text[end].isdigit() or text[end] == "."):
            end += 1
        return end

    def brk(c: str) -> bool:
        return c in "/_" or c.isdigit()

    def compare(a: str, b: str) -> int:
        i = j = 0
        while True:
            if i == len(a):
                return 0 if j == len(b) else -1
            if j == len(b):
                return 1
            if a[i].isdigit() and b[j].isdigit():
                i2, j2 = number_end(a, i + 1), number_end(b, j + 1)
                x, y = float(a[i:i2]), float(b[j:j2])
                if x != y:
                    return -1 if x < y else 1
                i, j = i2, j2
                continue
            if brk(a[i]):
                if not brk(b[j]):
                    return -1
            elif brk(b[j]):
                return 1
            elif a[i] != b[j]:
                return -1 if a[i] < b[j] else 1
            i, j = i + 1, j + 1

    return sorted(tags, key=functools.cmp_to_key(compare))
