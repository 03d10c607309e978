"""The launchers users run, as the tests run them: torchrun and accelerate launch, on one node or two on localhost.

Every launch is on the CPU with gloo (ACCELERATE_USE_CPU), on the loopback interface, with
ports from `free_port` and a bounded timeout; several launches of one job (one per
simulated node) run at the same time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from helpers.paths import REPO

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def console_script(name: str) -> str:
    """The launcher's console script next to this Python (the venv's), as a user types it."""
    script = Path(sys.executable).with_name(name)
    assert script.exists(), f"{script} is missing: the install did not provide the {name} launcher"
    return str(script)


def torchrun_one_node(max_restarts: int = 0) -> list[str]:
    return [console_script("torchrun"), "--standalone", "--nproc-per-node", "2", "--max-restarts", str(max_restarts)]


def torchrun_two_nodes() -> list[list[str]]:
    """Two torchrun agents of one job, one process each, meeting at a c10d rendezvous on the loopback."""
    endpoint, job = f"{LOOPBACK}:{free_port()}", f"job-{uuid.uuid4().hex[:8]}"
    agent = [console_script("torchrun"), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
             "--rdzv-endpoint", endpoint, "--rdzv-id", job]  # fmt: skip
    return [agent, agent]


def accelerate_two_machines() -> list[list[str]]:
    """`accelerate launch` on two machines of one process each (machine ranks 0 and 1), both on the loopback."""
    port = str(free_port())
    return [
        [console_script("accelerate"), "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2",
         "--machine_rank", str(rank), "--main_process_ip", LOOPBACK, "--main_process_port", port,
         "--mixed_precision", "no"]
        for rank in (0, 1)
    ]  # fmt: skip


@dataclass
class Ended:
    """How one launcher process ended: its exit status, its output (stdout and stderr) and its wall time."""

    returncode: int
    output: str
    seconds: float


def env(pythonpath: str = str(REPO), **extra: str) -> dict[str, str]:
    """The launchers' environment: CPU processes with one thread each, this checkout's code."""
    # torchrun shares its rendezvous store with the workers by default; a restarted group may
    # then read the failed one's addresses (pytorch/pytorch#135712): docs/scaling.md.
    return {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath,
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", **extra}  # fmt: skip


def launch(
    launchers: list[list[str]],
    *args: str,
    per_node: list[tuple[str, ...]] | None = None,
    timeout: float = 300,
    environ: dict[str, str] | None = None,
) -> list[Ended]:
    """`<launcher> -m callbacks_kit ARGS` for each launcher at once (the nodes of one job); how each ended.

    `per_node` adds arguments to each launcher's command, in order. On timeout every
    launcher's process group is killed and the test fails with their output.
    """
    start = time.monotonic()
    extras = per_node or [()] * len(launchers)
    processes = [
        subprocess.Popen([*launcher, "-m", "callbacks_kit", *args, *extra], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, cwd=REPO, env=environ or env(), start_new_session=True)
        for launcher, extra in zip(launchers, extras, strict=True)
    ]  # fmt: skip
    ended = []
    for process in processes:
        try:
            output, _ = process.communicate(timeout=max(1.0, timeout - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            for other in processes:
                if other.poll() is None:
                    os.killpg(other.pid, signal.SIGKILL)
            outputs = [p.communicate()[0][-3000:] for p in processes]
            raise AssertionError(f"the launch did not end within {timeout} s:\n" + "\n----\n".join(outputs)) from None
        ended.append(Ended(process.returncode, output, time.monotonic() - start))
    return ended
