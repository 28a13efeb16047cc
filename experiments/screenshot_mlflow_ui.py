"""Screenshots of ``mlflow ui`` as a user sees it, taken by headless Chromium (Debian's ``chromium``).

Starts ``mlflow ui`` on a free loopback port over the given store, finds the experiment's newest
``segad.train`` run and saves PNGs of the runs table, the run's overview and its charts, e.g. for the
README::

    python -m segad.train --data synthetic --image-size 128 --shots 10     # fills ./mlflow.db
    python experiments/screenshot_mlflow_ui.py --experiment segad-synthetic-widget --out docs/screenshots

Needs ``chromium`` on PATH (``apt-get install chromium``); says so when it is missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

# MLflow 3.17's UI picks its GenAI or model-training view from this URL parameter (else the browser's last
# choice, GenAI at first), no longer from the experiment's kind tag.
WORKFLOW = "workflowType=machine_learning"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api(url: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def wait_up(url: str, server: subprocess.Popen, seconds: float = 90) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if server.poll() is not None:
            sys.exit(f"mlflow ui exited with {server.returncode}; run it by hand to see why")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"mlflow ui did not answer on {url} within {seconds:.0f} s")


def shoot(chromium: str, page: str, out: Path, size: str, wait_ms: int) -> Path:
    cmd = [
        chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--window-size={size}", f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", page,
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    if res.returncode or not out.exists():
        sys.exit(f"chromium could not capture {page}: {res.stderr[-800:]}")
    print(f"{out}  <- {page}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="the store mlflow ui serves")
    ap.add_argument("--experiment", required=True, help="experiment name, e.g. segad-elpv-mono")
    ap.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    ap.add_argument("--size", default="1600,1000", help="browser window, W,H")
    ap.add_argument("--wait-ms", type=int, default=20000, help="virtual time the page gets to render")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("chromium is not installed: apt-get install chromium (Debian), then run this again")
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ui = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.tracking_uri, "--port", str(port)]
    server = subprocess.Popen(ui, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_up(url, server)
        name = urllib.parse.quote(args.experiment)
        try:
            exp = api(url, f"experiments/get-by-name?experiment_name={name}")["experiment"]
        except urllib.error.HTTPError:
            sys.exit(f"--experiment {args.experiment}: no such experiment in {args.tracking_uri}")
        eid = exp["experiment_id"]
        runs = api(url, "runs/search", {"experiment_ids": [eid], "order_by": ["attributes.start_time DESC"]})
        parents = [
            r
            for r in runs.get("runs", [])
            if not any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", []))
        ]
        if not parents:
            sys.exit(f"experiment {args.experiment} has no segad.train run yet")
        rid = parents[0]["info"]["run_id"]
        view = f"?{WORKFLOW}"
        shoot(chromium, f"{url}/#/experiments/{eid}/runs{view}", args.out / "runs_table.png", args.size, args.wait_ms)
        run = f"{url}/#/experiments/{eid}/runs/{rid}"
        shoot(chromium, f"{run}{view}", args.out / "run_overview.png", args.size, args.wait_ms)
        charts = f"{run}/artifacts/charts/overlays.png{view}"
        shoot(chromium, charts, args.out / "run_overlays.png", args.size, args.wait_ms)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
