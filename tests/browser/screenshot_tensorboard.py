"""Screenshots of TensorBoard on a sampler comparison, taken in headless Chromium (a manual check, not a CI test).

    python tests/browser/screenshot_tensorboard.py                      # small demo in a temporary folder
    python tests/browser/screenshot_tensorboard.py --runs runs/demo/samples --out docs

Without ``--runs`` it first makes a small demo in ``<workdir>/samples``: eight sampler variants (HMC and LA at
several step sizes, leapfrog steps and dampings) of ``configs/toy2d/sample_oracle_hmc.yaml`` on the analytic
(oracle) models, a minute on 2 cores; ``--smoke`` adds the 2D driver's ``smoke`` preset (two score models trained
for a few steps into ``<workdir>/train``, three sampler rows into ``<workdir>/samples/trial_0``). It then starts
TensorBoard on 127.0.0.1 on the *samples* folder only, drives
Chromium over the DevTools protocol (aiohttp's websocket client) and saves PNGs to ``--out``:
``tensorboard_hparams_table.png``, ``tensorboard_hparams_parallel.png``, ``tensorboard_accept_per_level.png`` (the
acceptance-per-level chart, unsmoothed, full width) and ``tensorboard_time_series.png`` (TIME SERIES as it opens).
Both servers are stopped at the end, also on errors. Chromium: ``apt-get install -y chromium``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[2]
ORACLE_CONFIG = REPO / "configs" / "toy2d" / "sample_oracle_hmc.yaml"
SAMPLER = "--model.init_args.sampler."
# Sampler variants on the analytic (oracle) models: run name -> overrides of sample_oracle_hmc.yaml.
ORACLE_VARIANTS: dict[str, list[str]] = {
    "hmc_eps0.01": [f"{SAMPLER}step_size", "0.01"],
    "hmc_eps0.03": [],
    "hmc_eps0.1": [f"{SAMPLER}step_size", "0.1"],
    "hmc_eps0.03_damping0.9": [f"{SAMPLER}damping", "0.9"],
    "hmc_eps0.02_5_leapfrog": [f"{SAMPLER}n_leapfrog", "5", f"{SAMPLER}step_size", "0.02"],
    "la_eps0.001": [f"{SAMPLER}kernel", "mala", f"{SAMPLER}step_size", "0.001"],
    "la_eps0.003": [f"{SAMPLER}kernel", "mala", f"{SAMPLER}step_size", "0.003"],
    "la_eps0.01": [f"{SAMPLER}kernel", "mala", f"{SAMPLER}step_size", "0.01"],
}
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")
WINDOW = (1920, 1080)

# Finds an element by its visible text through every shadow root (TensorBoard's dashboards are Polymer elements).
FIND_BY_TEXT = """
(text) => {
  const stack = [document];
  while (stack.length) {
    const root = stack.pop();
    for (const el of root.querySelectorAll('*')) {
      if (el.shadowRoot) stack.push(el.shadowRoot);
      if (el.children.length === 0 && el.textContent.trim().toUpperCase() === text.toUpperCase()) return el;
    }
  }
  return null;
}
"""


# ----- the demo --------------------------------------------------------------------------------------------------

def run(command: Sequence[str], timeout: float) -> None:
    """Run a command from the repository root, one torch thread; raise with its output tail if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{(result.stdout + result.stderr)[-3000:]}")


def oracle_command(run_dir: Path, n_samples: int, overrides: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "lit_mcmc.cli", "predict", "--config", str(ORACLE_CONFIG),
            "--trainer.default_root_dir", str(run_dir), "--trainer.enable_progress_bar", "false",
            "--data.init_args.n_samples", str(n_samples), "--data.init_args.batch_size", str(n_samples), *overrides]


def make_demo(workdir: Path, n_samples: int, smoke: bool) -> Path:
    """The oracle sampler variants (two at a time), and with ``smoke`` the 2D driver's smoke preset; returns the
    samples folder. Runs that finished before are kept."""
    samples = workdir / "samples"
    todo = [oracle_command(samples / name, n_samples, overrides) for name, overrides in ORACLE_VARIANTS.items()
            if not (samples / name / "stats.json").is_file()]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda command: run(command, timeout=600), todo))
    if smoke:
        run([sys.executable, "-m", "lit_mcmc.experiments.toy2d", "--preset", "smoke", "--out", str(workdir),
             "--jobs", "2"], timeout=900)
    return samples


# ----- the servers -----------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, timeout: float) -> str:
    """GET ``url`` until it answers (returns the body), or raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.5)


@contextmanager
def server(command: Sequence[str], log: Path) -> Iterator[subprocess.Popen]:
    """A background process, stopped (by its own id) when the block ends."""
    with log.open("w") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tensorboard_command(logdir: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
            "--port", str(port), "--load_fast", "false", "--reload_interval", "0"]


def chromium_command(port: int, profile: Path) -> list[str]:
    return ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}", "about:blank"]


# ----- the browser -----------------------------------------------------------------------------------------------

class Page:
    """One Chromium tab driven over the DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events in between are skipped)."""
        message_id = next(self.ids)
        await self.ws.send_str(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads((await self.ws.receive()).data)
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        return result.get("result", {}).get("value")

    async def goto(self, url: str, settle: float) -> None:
        await self.call("Page.navigate", url=url)
        await asyncio.sleep(settle)

    async def click_text(self, text: str, timeout: float = 30) -> None:
        """Click the element showing ``text`` (searched through shadow roots), waiting for it to appear."""
        deadline = time.monotonic() + timeout
        while not await self.evaluate(f"(() => {{ const el = ({FIND_BY_TEXT})({json.dumps(text)}); "
                                      "if (el) { el.click(); return true; } return false; })()"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no element showing {text!r} on the page")
            await asyncio.sleep(0.5)

    async def click_checkbox(self, label: str, timeout: float = 30) -> None:
        """Click the checkbox whose label reads ``label`` (the HPARAMS side bar's column switches)."""
        script = ("(() => { const stack = [document]; while (stack.length) { const root = stack.pop(); "
                  "for (const el of root.querySelectorAll('*')) { if (el.shadowRoot) stack.push(el.shadowRoot); "
                  "if (el.tagName.endsWith('-CHECKBOX') && el.textContent.trim() === " + json.dumps(label) + ") { "
                  "el.click(); return true; } } } return false; })()")
        deadline = time.monotonic() + timeout
        while not await self.evaluate(script):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no checkbox labelled {label!r} on the page")
            await asyncio.sleep(0.5)

    async def click_selector(self, selector: str) -> bool:
        """Click the first element matching a CSS selector (in the document, not in shadow roots), if any."""
        return bool(await self.evaluate(f"(() => {{ const el = document.querySelector({json.dumps(selector)}); "
                                        "if (el) { el.click(); return true; } return false; })()"))

    async def wait_text(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not await self.evaluate(f"(({FIND_BY_TEXT})({json.dumps(text)})) !== null"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no element showing {text!r} on the page")
            await asyncio.sleep(0.5)

    async def screenshot(self, path: Path) -> None:
        data = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(data["data"]))
        print(f"wrote {path}", file=sys.stderr)


async def take_screenshots(debug_port: int, tensorboard: str, out: Path, settle: float,
                           toggle: Sequence[str] = ()) -> None:
    """HPARAMS table, HPARAMS parallel coordinates, and the acceptance-per-level chart; with ``toggle``, also the
    table after clicking those hyper-parameter and metric names in the side bar (shown/hidden columns)."""
    targets = json.loads(wait_for(f"http://127.0.0.1:{debug_port}/json/list", 30))
    page_target = next(t for t in targets if t.get("type") == "page")
    async with aiohttp.ClientSession() as session, session.ws_connect(
            page_target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
        page = Page(ws)
        await page.call("Page.enable")
        await page.call("Emulation.setDeviceMetricsOverride", width=WINDOW[0], height=WINDOW[1],
                        deviceScaleFactor=1, mobile=False)
        await page.goto(f"{tensorboard}/#hparams", settle)
        await page.wait_text("TABLE VIEW")
        await asyncio.sleep(settle)
        await page.screenshot(out / "tensorboard_hparams_table.png")
        if toggle:
            for name in toggle:
                await page.click_checkbox(name)
                await asyncio.sleep(1.0)  # the side bar re-renders after each switch
            await asyncio.sleep(settle)
            await page.screenshot(out / "tensorboard_hparams_columns.png")
        await page.click_text("PARALLEL COORDINATES VIEW")
        await asyncio.sleep(settle)
        await page.screenshot(out / "tensorboard_hparams_parallel.png")
        await page.goto(f"{tensorboard}/#timeseries", settle)  # as TIME SERIES opens, for the record
        await page.screenshot(out / "tensorboard_time_series.png")
        await page.goto(f"{tensorboard}/?smoothing=0&tagFilter=accept_rate_per_level#timeseries", settle)
        await page.click_selector('[aria-label="Close side pane"]')  # the settings pane
        await page.click_selector('[title="Toggle full size mode"]')  # the chart across the page
        await asyncio.sleep(settle)
        await page.screenshot(out / "tensorboard_accept_per_level.png")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, help="folder of sampler runs (default: make a small demo first)")
    parser.add_argument("--workdir", type=Path, help="where the demo goes (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="folder for the PNGs (default: docs/)")
    parser.add_argument("--n-samples", type=int, default=256, help="samples per oracle variant of the demo")
    parser.add_argument("--smoke", action="store_true", help="add the 2D driver's smoke preset to the demo")
    parser.add_argument("--settle", type=float, default=6.0, help="seconds to let each page render")
    parser.add_argument("--toggle", nargs="+", default=(), metavar="NAME",
                        help="hyper-parameter or metric names to click in the HPARAMS side bar before a second table "
                             "screenshot, tensorboard_hparams_columns.png (e.g. --toggle model seed 'LL s.e.')")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tb_screens_") as tmp:
        scratch = Path(tmp)
        logdir = args.runs or make_demo(args.workdir or scratch / "demo", args.n_samples, args.smoke)
        args.out.mkdir(parents=True, exist_ok=True)
        tb_port, debug_port = free_port(), free_port()
        tensorboard = f"http://127.0.0.1:{tb_port}"
        with server(tensorboard_command(logdir, tb_port), scratch / "tensorboard.log"), \
                server(chromium_command(debug_port, scratch / "chromium-profile"), scratch / "chromium.log"):
            wait_for(f"{tensorboard}/data/plugins_listing", 60)
            asyncio.run(asyncio.wait_for(take_screenshots(debug_port, tensorboard, args.out, args.settle,
                                                          args.toggle), 300))


if __name__ == "__main__":
    main()
