"""Drive many fresh visitors against a running MedPEFT app and report what they cost.

    python -m ui.loadtest --url http://127.0.0.1:7860/ [--sessions 500 --warmup 100 --concurrency 8]
                          [--pid SERVER_PID] [--temp-dir /tmp/gradio] [--json out.json] [--no-baseline]

Each session is a new browser session (a fresh session hash, as a page load makes): the page's load
event (``/current_adapters``), ``/adapters``, ``/classify`` with and without Grad-CAM and ``/compare`` on a
real fundus photograph, each through Gradio's queue as the browser calls it. Reported: p50/p95
latency per call and per session, throughput, errors split into queue-full and other, the temp
folder's size, and (``--pid``, or found from the URL's port when the server runs on this machine:
the server's process, read from /proc) RSS growth per session
after the warm-up, as a ratio to a bare Gradio app (one text box) started and driven the same way
in the same run. PASS/FAIL against the targets (``--max-growth-mb`` over the measured sessions)."""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

QUEUE_FULL = "queue_full"


class CallError(RuntimeError):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MB (Linux /proc), or None when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def find_server_pid(url: str) -> int | None:
    """The process listening on ``url``'s port on this machine (Linux /proc), or None."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "0.0.0.0", "::1"):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                    inodes.add(fields[9])
        except OSError:
            continue
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in targets:
                    return int(proc.name)
        except OSError:
            continue
    return None


def folder_size(folder: str | os.PathLike) -> tuple[int, int]:
    """(bytes, files) below ``folder``."""
    total = files = 0
    for dirpath, _, filenames in os.walk(folder):
        for f in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
                files += 1
            except OSError:
                pass
    return total, files


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


class App:
    """A running Gradio app spoken to as its browser page does (queue join + server-sent events)."""

    def __init__(self, url: str, timeout: float = 120.0):
        self.url = url.rstrip("/") + "/"
        self.api = self.url + "gradio_api/"
        self.timeout = timeout
        config = httpx.get(self.url + "config", timeout=timeout).raise_for_status().json()
        self.fns = {d.get("api_name"): (i if d.get("id") is None else d["id"], d.get("queue", True) is not False)
                    for i, d in enumerate(config["dependencies"]) if d.get("api_name")}

    def has(self, api_name: str) -> bool:
        return api_name in self.fns

    def upload(self, http: httpx.Client, name: str, data: bytes) -> dict:
        r = http.post(self.api + "upload", files={"files": (name, data)}, timeout=self.timeout)
        r.raise_for_status()
        return {"path": r.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}

    def call(self, http: httpx.Client, session: str, api_name: str, data: list) -> list:
        fn_index, queued = self.fns[api_name]
        body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
        if not queued:
            r = http.post(self.api + f"run/{api_name.lstrip('/')}", json=body, timeout=self.timeout)
            if r.status_code != 200:
                raise CallError("other", f"HTTP {r.status_code}: {r.text[:200]}")
            return r.json()["data"]
        r = http.post(self.api + "queue/join", json=body, timeout=self.timeout)
        if r.status_code == 503 or "queue is full" in r.text.lower():
            raise CallError(QUEUE_FULL, "queue is full")
        if r.status_code != 200:
            raise CallError("other", f"HTTP {r.status_code}: {r.text[:200]}")
        event_id = r.json()["event_id"]
        with http.stream("GET", self.api + "queue/data", params={"session_hash": session},
                         timeout=self.timeout) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("event_id") not in (None, event_id):
                    continue
                if msg.get("msg") == "process_completed":
                    out = msg.get("output") or {}
                    if not msg.get("success", True) or "error" in out:
                        text = str(out.get("error") or out)
                        raise CallError(QUEUE_FULL if "queue is full" in text.lower() else "other", text[:300])
                    return out.get("data", [])
                if msg.get("msg") == "unexpected_error":
                    raise CallError("other", str(msg.get("message"))[:300])
        raise CallError("other", "the event stream ended without a result")


def visitor_script(app: App, image: bytes) -> list[tuple[str, callable]]:
    """The calls one fresh session makes (those the app has)."""
    steps = []
    if app.has("current_adapters"):
        steps.append(("current_adapters", lambda h, s: app.call(h, s, "current_adapters", ["All", "All", None])))
    if app.has("adapters"):
        steps.append(("adapters", lambda h, s: app.call(h, s, "adapters", [])))
    if app.has("classify"):
        def classify(h, s, cam):
            keys = [a["key"] for a in app.call(h, s, "adapters", [])[0] if a["task"] != "generation"]
            f = app.upload(h, "retina.png", image)
            return app.call(h, s, "classify", [f, keys[0] if keys else None, cam])

        steps.append(("classify", lambda h, s: classify(h, s, False)))
        steps.append(("classify_gradcam", lambda h, s: classify(h, s, True)))
        if app.has("compare"):
            def compare(h, s):
                keys = [a["key"] for a in app.call(h, s, "adapters", [])[0] if a["task"] != "generation"][:2]
                return app.call(h, s, "compare", [app.upload(h, "retina.png", image), keys])

            steps.append(("compare", compare))
    if app.has("echo"):  # the bare baseline app
        steps.append(("echo", lambda h, s: app.call(h, s, "echo", ["hello"])))
    return steps


def drive(app: App, sessions: int, concurrency: int, image: bytes, calls: list[str] | None = None) -> dict:
    """Run ``sessions`` fresh sessions, ``concurrency`` at a time; latencies in ms per call name."""
    results = {"latency_ms": {}, "session_ms": [], "errors": {}, "calls": 0}
    steps = [(n, f) for n, f in visitor_script(app, image) if not calls or n in calls or n == "echo"]
    lock = threading.Lock()
    local = threading.local()

    def one(_):
        http = getattr(local, "http", None) or httpx.Client()
        local.http = http
        session = uuid.uuid4().hex[:11]
        t0 = time.perf_counter()
        for name, step in steps:
            t = time.perf_counter()
            try:
                step(http, session)
                with lock:
                    results["latency_ms"].setdefault(name, []).append(1000 * (time.perf_counter() - t))
                    results["calls"] += 1
            except CallError as e:
                with lock:
                    results["errors"].setdefault(e.kind, []).append(f"{name}: {e}")
            except Exception as e:  # connection reset and the like
                with lock:
                    results["errors"].setdefault("other", []).append(f"{name}: {type(e).__name__}: {e}")
        with lock:
            results["session_ms"].append(1000 * (time.perf_counter() - t0))

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        list(pool.map(one, range(sessions)))
    return results


def measure(url: str, sessions: int, warmup: int, concurrency: int, image: bytes, pid: int | None,
            temp_dir: str | None, calls: list[str] | None = None) -> dict:
    app = App(url)
    drive(app, warmup, concurrency, image, calls)
    time.sleep(0.5)
    rss0 = rss_mb(pid) if pid else None
    t0 = time.perf_counter()
    res = drive(app, sessions, concurrency, image, calls)
    wall = time.perf_counter() - t0
    time.sleep(0.5)
    rss1 = rss_mb(pid) if pid else None
    all_ms = [v for vs in res["latency_ms"].values() for v in vs]
    out = {"url": url, "sessions": sessions, "warmup": warmup, "concurrency": concurrency,
           "wall_s": round(wall, 2), "calls": res["calls"], "throughput_calls_per_s": round(res["calls"] / wall, 2),
           "sessions_per_s": round(sessions / wall, 2),
           "latency_ms": {"p50": percentile(all_ms, 0.5), "p95": percentile(all_ms, 0.95),
                          **{name: {"p50": percentile(v, 0.5), "p95": percentile(v, 0.95), "n": len(v)}
                             for name, v in res["latency_ms"].items()}},
           "session_ms": {"p50": percentile(res["session_ms"], 0.5), "p95": percentile(res["session_ms"], 0.95)},
           "errors": {"queue_full": len(res["errors"].get(QUEUE_FULL, [])),
                      "other": len(res["errors"].get("other", [])),
                      "examples": (res["errors"].get("other", []) + res["errors"].get(QUEUE_FULL, []))[:5]}}
    if rss0 is not None and rss1 is not None:
        out["rss_mb"] = {"after_warmup": round(rss0, 1), "end": round(rss1, 1), "growth": round(rss1 - rss0, 1),
                         "per_session": round((rss1 - rss0) / max(1, sessions), 4)}
    if temp_dir:
        size, files = folder_size(temp_dir)
        out["temp_dir"] = {"bytes": size, "mb": round(size / 2**20, 2), "files": files}
    return out


BARE_APP = textwrap.dedent("""
    import os, sys
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr
    with gr.Blocks() as demo:
        box = gr.Textbox()
        out = gr.Textbox()
        gr.Button().click(lambda s: s, box, out, api_name="echo")
    demo.queue().launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), quiet=True, prevent_thread_lock=True)
    print("ready", flush=True)
    import time
    while True:
        time.sleep(3600)
""")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def baseline(sessions: int, warmup: int, concurrency: int, image: bytes) -> dict:
    """The bare Gradio app (one text box), started here and driven the same way; its RSS per session."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE_APP, str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/config", timeout=2).raise_for_status()
                break
            except Exception:
                time.sleep(0.3)
        return measure(f"http://127.0.0.1:{port}/", sessions, warmup, concurrency, image, proc.pid, None)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def example_image() -> bytes:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.retina()).resize((256, 256)).save(buf, format="PNG")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the running app, e.g. http://127.0.0.1:7860/")
    p.add_argument("--sessions", type=int, default=500, help="fresh sessions measured (default 500)")
    p.add_argument("--warmup", type=int, default=100, help="fresh sessions before measuring (default 100)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--pid", type=int, help="the server's process id, for RSS growth per session (/proc; default: the "
                                           "process listening on the URL's port, when it runs on this machine)")
    p.add_argument("--temp-dir", default=os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio"),
                   help="Gradio's temp folder, whose size is reported (default $GRADIO_TEMP_DIR or <tmp>/gradio)")
    p.add_argument("--calls", default="", help="comma-separated subset of current_adapters, adapters, classify, "
                                               "classify_gradcam, compare (default: all)")
    p.add_argument("--no-baseline", action="store_true", help="skip the bare Gradio app")
    p.add_argument("--max-growth-mb", type=float, default=40.0, help="target: RSS growth over the measured sessions")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    if args.pid is None:
        args.pid = find_server_pid(args.url)
    image = example_image()
    calls = [c.strip() for c in args.calls.split(",") if c.strip()] or None
    out = measure(args.url, args.sessions, args.warmup, args.concurrency, image, args.pid, args.temp_dir, calls)
    if args.pid and not args.no_baseline and "rss_mb" in out:
        base = baseline(args.sessions, args.warmup, args.concurrency, image)
        out["baseline"] = {k: base.get(k) for k in ("rss_mb", "latency_ms", "errors", "throughput_calls_per_s")}
        per, base_per = out["rss_mb"]["per_session"], (base.get("rss_mb") or {}).get("per_session")
        out["rss_ratio_to_bare_gradio"] = round(per / base_per, 2) if base_per else None
    checks = {}
    if "rss_mb" in out:
        checks[f"RSS growth over {args.sessions} sessions <= {args.max_growth_mb:g} MB"] = \
            out["rss_mb"]["growth"] <= args.max_growth_mb
    checks["no errors other than queue-full"] = out["errors"]["other"] == 0
    out["checks"] = {k: "PASS" if v else "FAIL" for k, v in checks.items()}
    lat = out["latency_ms"]
    print(f"{out['sessions']} sessions ({out['warmup']} warm-up), concurrency {out['concurrency']}: "
          f"{out['calls']} calls in {out['wall_s']} s ({out['throughput_calls_per_s']} calls/s, "
          f"{out['sessions_per_s']} sessions/s)")
    print(f"latency per call p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms" if lat["p50"] is not None
          else "no call succeeded")
    for name, v in lat.items():
        if isinstance(v, dict):
            print(f"  {name:18s} p50 {v['p50']:.0f} ms  p95 {v['p95']:.0f} ms  (n={v['n']})")
    print(f"errors: {out['errors']['queue_full']} queue-full, {out['errors']['other']} other")
    for e in out["errors"]["examples"]:
        print(f"  e.g. {e}")
    if "rss_mb" in out:
        r = out["rss_mb"]
        print(f"RSS {r['after_warmup']} -> {r['end']} MB: {r['growth']:+.1f} MB, {r['per_session']:.4f} MB per session"
              + (f" ({out['rss_ratio_to_bare_gradio']}x a bare Gradio app: "
                 f"{out['baseline']['rss_mb']['per_session']:.4f} MB per session)" if out.get("baseline") and
                 out.get("rss_ratio_to_bare_gradio") is not None else ""))
    if "temp_dir" in out:
        t = out["temp_dir"]
        print(f"temp folder: {t['mb']} MB in {t['files']} files")
    for k, v in out["checks"].items():
        print(f"{v}: {k}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
