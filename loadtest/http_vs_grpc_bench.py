#!/usr/bin/env python3
"""HTTP front door vs gRPC, side by side in one run: one orchestrator with every stage served by
diffmesh-stub-stages, one diffmesh-http in front of it. Rounds alternate between the gRPC path
(diffmesh-loadtest, the C++ SDK, concurrency 1) and the HTTP path (POST /v1/images/generations
over one keep-alive connection from Python's http.client, one request at a time), with the same
small request (64x64, 1 step, fixed seed), and report p50 / p99 of each and the difference.

    python3 loadtest/http_vs_grpc_bench.py --binary-dir build --rounds 5 --count 400
"""

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def percentile(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def grpc_round(loadtest, target, args):
    argv = [loadtest, f"--target={target}", "--json", f"--warmup={args.warmup}",
            f"--count={args.count}", "--concurrency=1", f"--height={args.size}",
            f"--width={args.size}", "--steps=1", "--seed=1", "--prompt=control plane",
            "--timeout=60"]
    out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"diffmesh-loadtest failed ({out.returncode}):\n{out.stderr}")
    report = json.loads(out.stdout)
    if report["errors"]:
        raise RuntimeError(f"gRPC errors: {report['first_error']}")
    e2e = report["latency_seconds"]["end_to_end"]
    return e2e["p50"], e2e["p99"]


def http_round(port, args, method="POST", path="/v1/images/generations"):
    """p50, p99 of `method path` over one keep-alive connection; the default is the generation,
    GET /metrics (no generation, a small answer) the HTTP floor: client + server + loopback."""
    body = json.dumps({"prompt": "control plane", "size": f"{args.size}x{args.size}",
                       "steps": 1, "seed": 1}) if method == "POST" else None
    headers = {"Content-Type": "application/json"} if body else {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    times = []
    for i in range(args.warmup + args.count):
        t0 = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        res = conn.getresponse()
        data = res.read()
        t1 = time.perf_counter()
        if res.status != 200:
            raise RuntimeError(f"HTTP {res.status}: {data[:300]!r}")
        if i >= args.warmup:
            times.append(t1 - t0)
    conn.close()
    return percentile(times, 0.5), percentile(times, 0.99)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary-dir", default="build")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=400, help="measured requests per round")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    loadtest = procs.binary(args.binary_dir, "loadtest", "diffmesh-loadtest")
    stub_bin = procs.binary(args.binary_dir, "loadtest", "diffmesh-stub-stages")
    orch_bin = procs.binary(args.binary_dir, "services", "orchestrator", "diffmesh-orchestrator")
    http_bin = procs.binary(args.binary_dir, "services", "http", "diffmesh-http")
    base = procs.free_base_port((0, 1, 2))
    stub_addr = f"127.0.0.1:{base + 1}"
    children = []
    rows = []
    try:
        stub = procs.Child([stub_bin, "--host=127.0.0.1", f"--port={base + 1}"])
        children.append(stub)
        procs.wait_for_port(base + 1, 30, stub.process)
        orch = procs.Child([orch_bin, "--host=127.0.0.1", f"--port={base}",
                            f"--pipeline={os.path.join(HERE, 'trivial_pipeline.json')}",
                            f"--ar-address={stub_addr}", f"--encoder-address={stub_addr}",
                            f"--denoise-address={stub_addr}"])
        children.append(orch)
        procs.wait_for_port(base, 30, orch.process)
        door = procs.Child([http_bin, f"--port={base + 2}", f"--orchestrator=127.0.0.1:{base}"])
        children.append(door)
        procs.wait_for_port(base + 2, 30, door.process)
        for r in range(args.rounds):
            g = grpc_round(loadtest, f"127.0.0.1:{base}", args)
            h = http_round(base + 2, args)
            floor = http_round(base + 2, args, "GET", "/metrics")
            rows.append((g, h, floor))
            print(f"round {r + 1}: gRPC p50 {1e3 * g[0]:.3f} ms, HTTP p50 {1e3 * h[0]:.3f} ms, "
                  f"GET /metrics p50 {1e3 * floor[0]:.3f} ms",
                  file=sys.stderr)
    finally:
        for c in reversed(children):
            c.stop()

    load = os.getloadavg()[0]
    print(f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"load average {load:.1f} at the end; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.size}x{args.size}, 1 step, "
          f"concurrency 1, {args.rounds} rounds x {args.count} requests (+{args.warmup} warm-up)")
    print("| round | gRPC p50 ms | HTTP p50 ms | HTTP − gRPC p50 ms | gRPC p99 ms | HTTP p99 ms "
          "| HTTP GET /metrics p50 ms |")
    print("|---|---|---|---|---|---|---|")
    for i, (g, h, f) in enumerate(rows):
        print(f"| {i + 1} | {1e3 * g[0]:.3f} | {1e3 * h[0]:.3f} | {1e3 * (h[0] - g[0]):+.3f} | "
              f"{1e3 * g[1]:.3f} | {1e3 * h[1]:.3f} | {1e3 * f[0]:.3f} |")
    med_g = statistics.median(r[0][0] for r in rows)
    med_h = statistics.median(r[1][0] for r in rows)
    med_f = statistics.median(r[2][0] for r in rows)
    print(f"| median | {1e3 * med_g:.3f} | {1e3 * med_h:.3f} | {1e3 * (med_h - med_g):+.3f} | | "
          f"| {1e3 * med_f:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
