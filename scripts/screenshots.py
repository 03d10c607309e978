"""Screenshots of a run in a real TensorBoard, taken with headless Chromium.

Starts `tensorboard --logdir RUN --host 127.0.0.1 --port PORT`, waits until it serves the
run, opens each dashboard in headless Chromium (Debian's `chromium` package) and saves
`<out>/<dashboard>.png`; then stops TensorBoard. Without --run it first makes a run
with the main job, shortened.

    python scripts/screenshots.py [--run RUN] [--out docs/screenshots] [--port 6123]
    python scripts/screenshots.py --run SEGMENTATION_RUN --only images_segmentation text_segmentation_report
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

# Scalars as logged: TensorBoard's default smoothing (0.6) bends a 5-point validation curve.
# ("Ignore outliers" lives in localStorage, not in the URL: it stays on.)
RAW = "&_smoothingWeight=0"
# (file name, URL fragment, window size): the legacy dashboards show one plugin each, and
# tagFilter narrows a page. The time-series dashboard is left out: headless Chromium draws
# its charts (WebGL in a worker) as empty frames.
DASHBOARDS = (
    ("scalars", f"#scalars{RAW}", "1400,1000"),  # what the dashboard opens on: train against validation
    ("custom_scalars", f"#custom_scalars{RAW}", "1400,1000"),
    ("histograms", "#histograms&tagFilter=layer4.1.conv2%7Cfc.weight", "1400,1000"),
    ("distributions", "#distributions&tagFilter=fc.weight", "1400,700"),
    ("images_gradcam", "#images&tagFilter=gradcam%7Cconfusion", "1400,1100"),
    ("images_features", "#images&tagFilter=kernels%7Cimage0/%5B014%5D", "1400,1350"),
    ("hparams", "#hparams", "1900,700"),
    (
        "images_training",
        "#images&tagFilter=train_batch%7Cper_layer%2Fact_hist%2F(conv1%7Clayer2.0.conv1%7Clayer4.1.conv2%7Cfc)%24",
        "1400,1400",
    ),
    (
        "scalars_layers",
        f"#scalars&tagFilter=per_layer%2F(update_ratio%7Cact_zeros)%2F(conv1%7Clayer4.1.conv2%7Cfc)%24%7Coptimisation{RAW}",
        "1400,1300",
    ),
    ("text", "#text&tagFilter=model_summary", "1400,1000"),
    ("images_top_losses", "#images&tagFilter=top_losses", "1400,1300"),
    ("text_class_report", "#text&tagFilter=class_report%7Ctop_losses", "1400,1300"),
    ("pr_curves", "#pr_curves", "1400,1000"),
    ("scalars_per_class", f"#scalars&tagFilter=val_class/(macro%7Cweighted%7Ccircle)/f1{RAW}", "1400,800"),
    ("projector", "#projector", "1400,900"),
    # A segmentation run (`callbacks-kit train --task segmentation`), taken with --run and --only:
    ("images_segmentation", "#images&tagFilter=segmentation%2F(overlays%7Cconfusion_matrix)", "1400,1300"),
    ("text_segmentation_report", "#text&tagFilter=segmentation_report", "1400,900"),
)
SEGMENTATION = ("images_segmentation", "text_segmentation_report")  # only with --only: the main job has none
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
]  # fmt: skip
MAIN_JOB = ["--train-samples", "600", "--val-samples", "200", "--hist-every", "4", "--log-every", "2",
            "--embeddings", "200", "--layer-stats-every", "2"]  # fmt: skip


def make_run(run: Path) -> None:
    """Train the main job, shortened, into `run`."""
    cmd = [sys.executable, "-m", "callbacks_kit", "train", *MAIN_JOB, "--no-progress", "--log-dir", str(run)]
    print("making the run:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def wait_for_tensorboard(port: int, timeout: float = 120) -> None:
    """Poll TensorBoard until it lists a run with scalars (it loads event files lazily)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as reply:
                if json.loads(reply.read()):
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"TensorBoard on port {port} did not serve the run within {timeout:.0f} s")


def screenshot(chromium: str, url: str, path: Path, budget_ms: int, size: str) -> None:
    """One headless Chromium screenshot of `url`, from a fresh profile."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
               f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", url]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, timeout=180)


def graph_screenshot(chromium: str, port: int, path: Path, wait_s: float) -> None:
    """The graph dashboard with the model node opened by a double-click, then fitted to the screen."""
    with tempfile.TemporaryDirectory() as profile, DevTools(chromium, profile) as browser:
        browser.call("Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1, mobile=False)
        browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/#graphs")
        time.sleep(wait_s)
        browser.click(440, 292, double=True)  # the model's node, where TensorBoard first draws it at this size
        time.sleep(wait_s / 2)
        browser.click(96, 144)  # "Fit to screen"
        time.sleep(wait_s / 2)
        path.write_bytes(base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"]))


class DevTools:
    """Headless Chromium driven through the DevTools protocol over a minimal WebSocket client."""

    def __init__(self, chromium: str, profile: str) -> None:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(profile, "DevToolsActivePort")  # Chromium writes the port it picked here
        for _ in range(150):
            if port_file.exists() and port_file.read_text().strip():
                break
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            page = next(p for p in json.loads(reply.read()) if p["type"] == "page")
        url = urllib.parse.urlparse(page["webSocketDebuggerUrl"])
        self.socket = socket.create_connection((url.hostname, url.port), timeout=120)
        key = base64.b64encode(os.urandom(16)).decode()
        self.socket.sendall(
            f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.socket.recv(4096)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError(f"DevTools refused the WebSocket: {head[:200]!r}")
        self.last_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its reply (events in between are dropped)."""
        self.last_id += 1
        self._send(json.dumps({"id": self.last_id, "method": method, "params": params}).encode())
        while True:
            reply = json.loads(self._receive())
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def click(self, x: int, y: int, double: bool = False) -> None:
        """A left click (or a double click) at page coordinates."""
        for count in (1, 2) if double else (1,):
            for kind in ("mousePressed", "mouseReleased"):
                self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=count)

    def _send(self, data: bytes) -> None:  # one masked text frame, as clients must send
        n, mask = len(data), os.urandom(4)
        size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
        if n >= 1 << 16:
            size = bytes([0x80 | 127]) + struct.pack("!Q", n)
        self.socket.sendall(bytes([0x81]) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += self.socket.recv(1 << 20)
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _receive(self) -> str:  # one message, across continuation frames
        message = b""
        while True:
            first, second = self._read(2)
            n = second & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            message += self._read(n)
            if first & 0x80:
                return message.decode()

    def __enter__(self) -> DevTools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run folder (default: make one with the main job)")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    parser.add_argument("--port", type=int, default=6123)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--budget-ms", type=int, default=25_000, help="virtual time Chromium gives each page")
    parser.add_argument("--window-size", help="WIDTH,HEIGHT for every page (default: per dashboard)")
    parser.add_argument("--only", nargs="+", help="dashboards to take (default: all)")
    parser.add_argument("--wait-s", type=float, default=10, help="real seconds the graph page gets to load")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="screenshots-"))
    run = args.run or work / "run"
    if args.run is None:
        make_run(run)
    args.out.mkdir(parents=True, exist_ok=True)
    tensorboard = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(run), "--host", "127.0.0.1",
         "--port", str(args.port), "--reload_interval", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_tensorboard(args.port)
        for name, fragment, size in DASHBOARDS:
            if (args.only and name not in args.only) or (not args.only and name in SEGMENTATION):
                continue
            path = args.out / f"{name}.png"
            url = f"http://127.0.0.1:{args.port}/{fragment}"
            screenshot(args.chromium, url, path, args.budget_ms, args.window_size or size)
            print(f"{path}  <- {fragment}", flush=True)
        if not args.only or "graphs" in args.only:
            graph_screenshot(args.chromium, args.port, args.out / "graphs.png", args.wait_s)
            print(f"{args.out / 'graphs.png'}  <- #graphs, model node opened", flush=True)
    finally:
        tensorboard.terminate()
        tensorboard.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
