"""Take the README's MLflow UI screenshots from a live ``mlflow server`` (headless Chromium).

    mlflow server --backend-store-uri sqlite:///demo/mlflow.db --artifacts-destination demo/art \\
        --host 127.0.0.1 --port 5078 &
    mtlsearch search --space search_spaces/quick.yaml --dataset synthetic \\
        --data-option n=4000 --data-option d=20 --n-trials 20 --study synthetic-demo \\
        --storage sqlite:///demo/study.db --objectives y1 --objectives y2 --objectives params \\
        --seed 1 --tracking-uri http://127.0.0.1:5078
    python docs/screenshots.py --url http://127.0.0.1:5078 --experiment synthetic-demo

Chromium is driven over the DevTools protocol (aiohttp's websocket client, installed with
MLflow) because the shots need clicks: close the assistant panel, expand the study's parent
run, pick the axes of the parallel-coordinates plot.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARAMS = [
    "n_levels",
    "model.levels.0.n_shared",
    "model.levels.0.n_specific",
    "model.towers.0.hidden",
    "training.lr",
]
METRICS = ["valid.y1.mse", "valid.y2.mse", "n_params"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """A headless Chromium page, driven over the DevTools protocol."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.port = _free_port()
        self.profile = tempfile.mkdtemp(prefix="mtlsearch-shots-")
        self.next_id = 0

    async def __aenter__(self) -> Browser:
        import aiohttp

        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            raise SystemExit("chromium is not installed (Debian: apt-get install -y chromium)")
        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", f"--remote-debugging-port={self.port}",
             f"--user-data-dir={self.profile}", f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        pages = []
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as r:
                    pages = [t for t in json.load(r) if t["type"] == "page"]
            except OSError:
                pass
            if pages:
                break
            await asyncio.sleep(0.2)
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        await self.http.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)

    async def send(self, method: str, **params: object) -> dict:
        self.next_id += 1
        mid = self.next_id
        await self.ws.send_json({"id": mid, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json()
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def js(self, expression: str) -> object:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not await self.js(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never satisfied {expression}")
            await asyncio.sleep(0.3)

    async def key(self, key: str, code: int) -> None:
        for kind in ("keyDown", "keyUp"):
            await self.send(
                "Input.dispatchKeyEvent",
                type=kind,
                key=key,
                code=key,
                windowsVirtualKeyCode=code,
                nativeVirtualKeyCode=code,
            )

    async def screenshot(self, path: Path) -> None:
        result = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(result["data"]))
        print(f"wrote {path}")


CLOSE_ASSISTANT = (
    "[...document.querySelectorAll('button')].find(b => b.getAttribute('aria-label') === 'Close')?.click()"
)


async def _choose(page: Browser, select: int, option: str) -> None:
    """Type into the n-th multi-select of the parallel-coordinates controls and click the
    option whose text is exactly ``option`` (typing filters by substring)."""
    await page.js(f"document.querySelectorAll('input[role=combobox]')[{select}].click()")
    await page.js(f"document.querySelectorAll('input[role=combobox]')[{select}].focus()")
    await page.send("Input.insertText", text=option)
    await asyncio.sleep(0.5)
    clicked = await page.js(
        "(() => { const o = [...document.querySelectorAll('[title]')].find(e => e.getAttribute('title') === "
        f"{json.dumps(option)} && e.className.includes('option')); o?.click(); return !!o }})()"
    )
    if not clicked:
        raise RuntimeError(f"no option {option!r} in the parallel-coordinates controls")
    await asyncio.sleep(0.3)
    await page.key("Escape", 27)


async def main(url: str, experiment: str, out_dir: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(url)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment {experiment!r} at {url}")
    front = client.search_runs([exp.experiment_id], "tags.pareto_front = 'true'")
    front.sort(key=lambda r: int(r.data.tags["trial_number"]))

    async with Browser(1600, 860) as page:
        search = urllib.parse.quote('tags.pareto_front = "true"')
        await page.send(
            "Page.navigate", url=f"{url}/#/experiments/{exp.experiment_id}/runs?searchFilter={search}"
        )
        await page.wait_for("document.body.innerText.includes('matching runs')")
        await asyncio.sleep(2)
        await page.js(CLOSE_ASSISTANT)
        await page.js("document.querySelector('button[data-component-id*=runnamecellrenderer]')?.click()")
        await page.wait_for(f"document.querySelectorAll('[role=row]').length >= {len(front) + 2}")
        await asyncio.sleep(1.5)
        await page.screenshot(out_dir / "mlflow-pareto-front-runs.png")

    async with Browser(1600, 900) as page:
        runs = urllib.parse.quote(json.dumps([r.info.run_id for r in front]))
        exps = urllib.parse.quote(json.dumps([exp.experiment_id]))
        await page.send("Page.navigate", url=f"{url}/#/compare-runs?runs={runs}&experiments={exps}")
        await page.wait_for("document.querySelectorAll('input[role=combobox]').length >= 2")
        await asyncio.sleep(2)
        await page.js(CLOSE_ASSISTANT)
        await page.js("document.querySelector('[data-testid=clear-button]')?.click()")
        await asyncio.sleep(0.5)
        for name in PARAMS:
            await _choose(page, 0, name)
        for name in METRICS:
            await _choose(page, 1, name)
        await page.js("document.activeElement?.blur()")
        await asyncio.sleep(2)
        await page.screenshot(out_dir / "mlflow-pareto-front-compare.png")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:5078")
    parser.add_argument("--experiment", default="synthetic-demo")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.experiment, args.out_dir))
