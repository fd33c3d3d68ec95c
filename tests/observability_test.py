#!/usr/bin/env python3
"""End-to-end test of the metrics and the Grafana dashboard.

Starts a local mesh (`diffmesh up`, its services' /metrics on P+10..P+13) and a real Prometheus
(the `prometheus` binary, a generated config, scrape interval 1 s, TSDB in a temporary folder),
sends requests through `diffmesh generate --server`, waits for the scrapes, and then runs every
PromQL query of every panel of helm/diffmesh/dashboards/diffmesh.json (and the dashboard's variable
queries) against Prometheus' HTTP API, asserting that each returns data.

Dashboard variables are substituted as Grafana would with "All" selected: $model becomes the
served model, $instance a regex matching every instance, and $__rate_interval a window that
covers the whole request phase (at least 10 s), so that every rate() sees the requests.

Exempt: the GPU-memory panel, when it returns nothing. `diffmesh up` runs the stages on the CPU
(--device defaults to cpu), so no process holds GPU memory and diffmesh_gpu_memory_bytes has no
samples; on a mesh whose stages use CUDA the panel is checked like the others.
Also exempt: the video panels (diffmesh_video_*, diffmesh_audio_*), when they return nothing:
`diffmesh up` serves an image model, whose requests make no video or sound; the observer's test
(services/orchestrator/prometheus_observer_test.cc) checks those series.

Environment: DIFFMESH_BINARY_DIR (the build tree), DIFFMESH_SOURCE_DIR (the repository),
DIFFMESH_PROMETHEUS (the prometheus binary; default: `prometheus` on PATH). Python 3 stdlib only.
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

# The project's port helpers (loadtest/procs.py, standard library only).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "loadtest"))
import procs  # noqa: E402

MODEL = "glm-image-tiny"
GPU_METRIC = "diffmesh_gpu_memory_bytes"
VIDEO_METRICS = ("diffmesh_video_", "diffmesh_audio_")


def log(*args):
    print(*args, flush=True)


def free_base_port(span):
    """A base port P with P..P+span-1 free (loadtest/procs.py)."""
    return procs.free_base_port(tuple(range(span)))


def http_get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode("utf-8")


def wait_until(what, predicate, timeout, interval=0.5):
    end = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < end:
        try:
            if predicate():
                return
        except (OSError, urllib.error.URLError, ValueError) as e:  # not up yet
            last_error = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


class Prometheus:
    def __init__(self, binary, workdir, targets):
        self.port = free_base_port(1)
        self.url = f"http://127.0.0.1:{self.port}"
        config = os.path.join(workdir, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n")
            f.write("scrape_configs:\n  - job_name: diffmesh\n    static_configs:\n")
            f.write("      - targets: [" + ", ".join(f"'{t}'" for t in targets) + "]\n")
        self.log_path = os.path.join(workdir, "prometheus.log")
        self.log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}",
             f"--storage.tsdb.path={os.path.join(workdir, 'tsdb')}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True)

    def query(self, expr, at=None):
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            body = http_get(url, timeout=10)
        except urllib.error.HTTPError as e:  # 400 on a PromQL error: keep Prometheus' message
            body = e.read().decode("utf-8")
        reply = json.loads(body)
        if reply.get("status") != "success":
            raise AssertionError(f"query failed: {expr}\n  {reply.get('errorType')}: {reply.get('error')}")
        return reply["data"]

    def metadata(self):
        return json.loads(http_get(f"{self.url}/api/v1/metadata", timeout=10))["data"]

    def stop(self):
        stop_process(self.proc)
        self.log_file.close()


def stop_process(proc, grace=15):
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the process and its children
        proc.wait()


def dashboard_targets(dashboard):
    """(panel title, expr) of every query target, rows' nested panels included."""
    out = []

    def walk(panels):
        for p in panels:
            if p.get("type") == "row":
                walk(p.get("panels", []))
                continue
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p["title"], t["expr"]))

    walk(dashboard["panels"])
    return out


def substitute(expr, rate_interval):
    for name, value in (("model", MODEL), ("instance", ".*"), ("__rate_interval", rate_interval)):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def has_finite_value(data):
    if data["resultType"] == "scalar":
        return math.isfinite(float(data["result"][1]))
    return any(math.isfinite(float(s["value"][1])) for s in data["result"])


def main():
    binary_dir = os.environ["DIFFMESH_BINARY_DIR"]
    source_dir = os.environ.get("DIFFMESH_SOURCE_DIR",
                                os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    prometheus_bin = os.environ.get("DIFFMESH_PROMETHEUS") or shutil.which("prometheus")
    if not prometheus_bin or not os.path.exists(prometheus_bin):
        raise AssertionError("the prometheus binary is missing (Debian package `prometheus`; "
                             "scripts/install-deps.sh installs it)")
    diffmesh = os.path.join(binary_dir, "services", "cli", "diffmesh")
    with open(os.path.join(source_dir, "helm", "diffmesh", "dashboards", "diffmesh.json")) as f:
        dashboard = json.load(f)

    workdir = tempfile.mkdtemp(prefix="diffmesh-observability-")
    mesh = prometheus = None
    try:
        # gRPC on P..P+3, the denoise rendezvous on P+9, /metrics on P+10..P+13.
        base = free_base_port(14)
        metrics_targets = [f"127.0.0.1:{base + 10 + i}" for i in range(4)]
        mesh_log = os.path.join(workdir, "mesh.log")
        mesh_out = open(mesh_log, "w")
        mesh = subprocess.Popen([diffmesh, "up", f"--base-port={base}"], stdout=mesh_out,
                                stderr=subprocess.STDOUT, start_new_session=True)

        def mesh_up():
            if mesh.poll() is not None:
                raise AssertionError(f"diffmesh up exited ({mesh.returncode}):\n" + open(mesh_log).read())
            return "mesh is up" in open(mesh_log).read()

        wait_until("the mesh", mesh_up, timeout=300)
        up_text = open(mesh_log).read()
        for t in metrics_targets:
            assert f"metrics http://{t}/metrics" in up_text, f"diffmesh up did not print {t}:\n{up_text}"
        log(f"mesh up on {base}..{base + 3}, metrics on {base + 10}..{base + 13}")

        prometheus = Prometheus(prometheus_bin, workdir, metrics_targets)
        wait_until("Prometheus", lambda: http_get(f"{prometheus.url}/-/ready").strip() != "", timeout=120)

        def all_scraped():
            data = prometheus.query('sum(up{job="diffmesh"})')
            return bool(data["result"]) and float(data["result"][0]["value"][1]) == len(metrics_targets)

        wait_until("Prometheus to scrape every service", all_scraped, timeout=60)
        log("Prometheus scrapes all four services")

        # Requests: two at once (in-flight > 1, the AR batch), then one more, then a rejected one.
        t_start = time.time()
        server = f"127.0.0.1:{base}"

        def generate(i, steps=2):
            return subprocess.Popen(
                [diffmesh, "generate", "--server", server, "--prompt", f'a sign that says "{i}"',
                 "--seed", str(i), "--steps", str(steps),
                 "--output", os.path.join(workdir, f"out{i}.png")],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        for batch in ([1, 2], [3]):
            running = [generate(i) for i in batch]
            for p in running:
                out, _ = p.communicate(timeout=300)
                assert p.returncode == 0, f"generate failed:\n{out}"
        for i in (1, 2, 3):
            # The image arrived as output chunks; the CLI assembled and wrote it whole.
            with open(os.path.join(workdir, f"out{i}.png"), "rb") as f:
                head = f.read(8)
            assert head == b"\x89PNG\r\n\x1a\n", f"out{i}.png is not a PNG: {head!r}"
        bad = generate(4, steps=100000)  # over the model's limits.max_steps
        out, _ = bad.communicate(timeout=60)
        assert bad.returncode != 0 and "INVALID_ARGUMENT" in out and "steps" in out, \
            f"expected INVALID_ARGUMENT naming steps:\n{out}"
        t_end = time.time()
        log(f"3 images and 1 rejected request in {t_end - t_start:.1f} s")

        # Evaluate just after the last request, once Prometheus has scraped past it; the rate
        # window reaches back over all of them.
        at = t_end + 3
        window = max(10, math.ceil(at - t_start) + 5)
        rate_interval = f"{window}s"
        time.sleep(max(0.0, at + 2 - time.time()))

        failures = []
        checked = exempt = 0
        for title, expr in dashboard_targets(dashboard):
            query = substitute(expr, rate_interval)
            try:
                data = prometheus.query(query, at=at)
            except AssertionError as e:
                failures.append(f"[{title}] {e}")
                continue
            if not data["result"]:
                if GPU_METRIC in query:
                    exempt += 1
                    log(f"exempt (no GPU memory in this CPU mesh): [{title}] {query}")
                    continue
                if any(m in query for m in VIDEO_METRICS):
                    exempt += 1
                    log(f"exempt (an image model makes no video): [{title}] {query}")
                    continue
                failures.append(f"[{title}] no data: {query}")
            elif not has_finite_value(data):
                failures.append(f"[{title}] only NaN/Inf: {query}\n  {data['result']}")
            else:
                checked += 1
        # The variables' label_values(metric, label) queries.
        for var in dashboard["templating"]["list"]:
            q = var.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", q or "")
            if var["type"] != "query":
                continue
            assert m, f"variable {var['name']}: unexpected query {q}"
            data = prometheus.query(f"count by ({m.group(2)}) ({m.group(1)})", at=at)
            if not data["result"]:
                failures.append(f"variable ${var['name']}: {q} has no values")
            else:
                checked += 1
                values = sorted(s["metric"][m.group(2)] for s in data["result"])
                log(f"variable ${var['name']}: {values}")
        if not any(var["name"] == "model" for var in dashboard["templating"]["list"]):
            failures.append("dashboard has no $model variable")

        # Naming rules, from the metadata Prometheus scraped.
        for name, entries in prometheus.metadata().items():
            if not name.startswith("diffmesh_"):
                continue
            kind = entries[0]["type"]
            if kind == "counter" and not name.endswith("_total"):
                failures.append(f"counter {name} does not end in _total")
            if kind != "counter" and name.endswith("_total"):
                failures.append(f"{kind} {name} ends in _total")
            if kind == "histogram" and not name.endswith(("_seconds", "_bytes")):
                failures.append(f"histogram {name} is not in a base unit (_seconds, _bytes)")

        log(f"{checked} dashboard queries returned data, {exempt} exempt")
        if failures:
            raise AssertionError("\n".join(failures))
        log("PASS")
    except BaseException:
        for name in ("mesh.log", "prometheus.log"):
            path = os.path.join(workdir, name)
            if os.path.exists(path):
                log(f"--- {name} (last 40 lines)")
                log("".join(open(path).readlines()[-40:]))
        raise
    finally:
        if prometheus is not None:
            prometheus.stop()
        if mesh is not None:
            stop_process(mesh)
        if os.environ.get("DIFFMESH_KEEP_TEMP"):
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
