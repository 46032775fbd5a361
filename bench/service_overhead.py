"""``python -m bench.service_overhead``: the inference service's CPU per image at one fixed
load, from two checkouts side by side, so that the only thing that differs is the service's
code around the model.

Each round starts each checkout's Gunicorn service (its own venv, its own gunicorn.conf.py,
one worker, random 32 px weights, no access log) on a free port, waits for /readyz, warms it
up, then sends the same ``--requests`` multipart /v1/predict requests of ``--batch`` images
from ``--clients`` threads and reads the CPU (user + system) its master and workers used
meanwhile.  The requests, the images and so the model's batches are the same for both
versions (one client: every request is one batch of ``--batch``), and both run the same
model on the same runtime, so a difference in CPU per image is a difference in the
service's own share.  Rounds alternate the order (A B, B A, ...) to spread a machine's
drift over both; the spread between rounds says what difference the figures can show.

    .venv/bin/python -m bench.service_overhead --base ../checkout-53f0037 --new . --rounds 6

A benchmark, not a test: it prints figures and writes them to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image

from stack.ports import free_port


def images(count: int, seed: int = 7) -> list[bytes]:
    """``count`` 32x32 PNGs of smooth random colour (a few KB each, as CIFAR's are)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((32, 32), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def multipart(pngs: list[bytes], first_id: int) -> tuple[bytes, str]:
    """A /v1/predict body: per image an image_id text part and an image file part."""
    boundary = "bench-service-overhead"
    parts = []
    for i, png in enumerate(pngs):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image_id"\r\n\r\nimg-{first_id + i}\r\n'
                     .encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{i}.png"\r\n'
                     f'Content-Type: image/png\r\n\r\n'.encode() + png + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live children (Gunicorn's workers)."""
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


class Service:
    """One checkout's Gunicorn service on a free loopback port."""

    def __init__(self, checkout: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MODEL_WEIGHTS": "random", "MODEL_INPUT_SIZE": "32", "GUNICORN_WORKERS": "1",
               "INFERENCE_BIND": f"127.0.0.1:{self.port}", "GUNICORN_ACCESSLOG": "/dev/null",
               "PYTHONUNBUFFERED": "1"}
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(
            [str(checkout / ".venv" / "bin" / "python"), "-m", "gunicorn", "-c", "inference/gunicorn.conf.py",
             "inference:create_app()"], cwd=checkout, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the service was not ready within {timeout_s:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def drive(url: str, bodies: list[tuple[bytes, str]], clients: int) -> None:
    """Send every body once, ``clients`` at a time; every answer must be 200."""
    todo = list(range(len(bodies)))
    lock = threading.Lock()
    errors: list[str] = []

    def client():
        with requests.Session() as s:
            while True:
                with lock:
                    if not todo or errors:
                        return
                    i = todo.pop()
                data, ctype = bodies[i]
                r = s.post(url + "/v1/predict", data=data, headers={"Content-Type": ctype}, timeout=120)
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"/v1/predict failed: {errors[0]}")


def measure(checkout: Path, bodies: list[tuple[bytes, str]], warmup: list[tuple[bytes, str]], clients: int,
            log: Path) -> dict:
    svc = Service(checkout, log)
    try:
        svc.wait_ready()
        drive(svc.url, warmup, clients)
        cpu0, t0 = tree_cpu_s(svc.proc.pid), time.perf_counter()
        drive(svc.url, bodies, clients)
        cpu1, t1 = tree_cpu_s(svc.proc.pid), time.perf_counter()
    finally:
        svc.stop()
    return {"cpu_s": cpu1 - cpu0, "wall_s": t1 - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="checkout of the version to compare against (with .venv)")
    ap.add_argument("--new", type=Path, default=Path("."), help="checkout of the new version (default .)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32, help="images per request")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("results/bench/service-overhead"))
    args = ap.parse_args(argv)
    pngs = images(256)
    n_img = args.requests * args.batch
    bodies = [multipart([pngs[(r * args.batch + i) % len(pngs)] for i in range(args.batch)], r * args.batch)
              for r in range(args.requests)]
    warmup = bodies[:20]
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    versions = {"base": args.base.resolve(), "new": args.new.resolve()}
    runs: dict[str, list[dict]] = {"base": [], "new": []}
    for rnd in range(args.rounds):
        order = ("base", "new") if rnd % 2 == 0 else ("new", "base")
        for name in order:
            m = measure(versions[name], bodies, warmup, args.clients, out / f"{name}.log")
            m["core_ms_per_img"] = 1000.0 * m["cpu_s"] / n_img
            runs[name].append(m)
            print(f"[{time.strftime('%H:%M:%S')}] round {rnd + 1} {name}: {m['core_ms_per_img']:.3f} core-ms/img, "
                  f"{n_img / m['wall_s']:.0f} img/s (load {os.getloadavg()[0]:.2f})", flush=True)
    summary = {}
    for name, ms in runs.items():
        xs = [m["core_ms_per_img"] for m in ms]
        summary[name] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}
    print(f"\ncore-ms per image, {args.rounds} rounds of {args.requests} requests x {args.batch} images, "
          f"{args.clients} client(s):")
    for name in ("base", "new"):
        s = summary[name]
        print(f"  {name:4s} {versions[name]}: median {s['median']:.3f}, range {s['min']:.3f}-{s['max']:.3f}")
    diffs = [n["core_ms_per_img"] - b["core_ms_per_img"] for b, n in zip(runs["base"], runs["new"])]
    print(f"  new - base, per round: {', '.join(f'{d:+.3f}' for d in diffs)} (median {statistics.median(diffs):+.3f})")
    (out / "service_overhead.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "versions": {k: str(v) for k, v in versions.items()},
         "runs": runs, "summary": summary, "new_minus_base": diffs}, indent=1))
    print(f"  {out / 'service_overhead.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
