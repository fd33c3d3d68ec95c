#!/usr/bin/env python3
"""Control-plane benchmark: the real orchestrator on loopback, every stage served by
diffmesh-stub-stages (negligible work, see stub_stages.cc), driven by diffmesh-loadtest.

    python3 loadtest/control_plane_bench.py --binary-dir build --concurrency 1,2,4,8,16 \
        --count 2000 --warmup 200

For each closed-loop concurrency (and each --rate, open loop) it reports throughput, end-to-end
p50/p99, the orchestrator's own share (server total minus the stages' timings) p50/p99, and the
CPU time the orchestrator and the stub spent per request. --check turns it into a test: every
request must succeed, counts must match and percentiles must be ordered.
"""

import argparse
import json
import os
import resource
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PIPELINE_STAGES = ("ar", "encoder", "denoise")  # trivial_pipeline.json's stages
SERVER_TIMINGS = {"transfer", "vae_decode", "orchestrator"}


def run_loadtest(loadtest, target, extra, args):
    argv = [loadtest, f"--target={target}", "--json", f"--warmup={args.warmup}",
            f"--height={args.size}", f"--width={args.size}", f"--steps={args.steps}",
            "--seed=1", "--prompt=control plane", "--timeout=60", *extra]
    if args.count:
        argv.append(f"--count={args.count}")
    if args.duration:
        argv.append(f"--duration={args.duration}")
    out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=3600)
    if out.returncode not in (0, 1):
        raise RuntimeError(f"diffmesh-loadtest failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout)


def measure(orch, stub, loadtest, target, extra, args):
    """One diffmesh-loadtest run, with the CPU each process (and everything else) used."""
    cpu0 = (orch.cpu_seconds(), stub.cpu_seconds(), children_cpu_seconds())
    sys0 = procs.system_cpu_seconds()
    report = run_loadtest(loadtest, target, extra, args)
    sys1 = procs.system_cpu_seconds()
    cpu1 = (orch.cpu_seconds(), stub.cpu_seconds(), children_cpu_seconds())
    requests = report["count"] + report["warmup"]
    report["cpu_ms_per_request"] = {
        "orchestrator": 1e3 * (cpu1[0] - cpu0[0]) / max(1, requests),
        "stub_stages": 1e3 * (cpu1[1] - cpu0[1]) / max(1, requests),
        "loadtest": 1e3 * (cpu1[2] - cpu0[2]) / max(1, requests),
    }
    # Cores kept busy by anything else while this level ran (other builds, ...): the figures
    # are only clean when this is near 0.
    ours = sum(cpu1) - sum(cpu0)
    wall = (sys1[1] - sys0[1]) / (os.cpu_count() or 1)
    report["other_busy_cores"] = max(0.0, (sys1[0] - sys0[0]) - ours) / wall if wall > 0 else 0.0
    return report


def children_cpu_seconds() -> float:
    """CPU time of the finished child processes (the diffmesh-loadtest runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def check(report, args, label):
    problems = []
    if report["errors"] != 0:
        problems.append(f"{report['errors']} errors: {report['errors_by_code']} {report['first_error']}")
    if args.count and report["count"] != args.count:
        problems.append(f"count {report['count']} != {args.count}")
    if report["ok"] != report["count"]:
        problems.append(f"ok {report['ok']} != count {report['count']}")
    lat = report["latency_seconds"]
    for name, s in [("end_to_end", lat["end_to_end"]), ("orchestrator", lat["orchestrator"]),
                    *[(k, v) for k, v in lat["stages"].items()]]:
        if not (s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]):
            problems.append(f"{name} percentiles out of order: {s}")
    # Every stage of the trivial pipeline, plus only timings the server adds of its own
    # (GenerationService's StageTiming: "transfer", "vae_decode", "orchestrator").
    stages = set(lat["stages"])
    if not set(PIPELINE_STAGES) <= stages or not stages <= set(PIPELINE_STAGES) | SERVER_TIMINGS:
        problems.append(f"stages {sorted(stages)}, expected {list(PIPELINE_STAGES)} "
                        f"and at most {sorted(SERVER_TIMINGS)} besides")
    if problems:
        raise AssertionError(f"{label}: " + "; ".join(problems))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary-dir", default="build")
    parser.add_argument("--concurrency", default="1,2,4,8,16",
                        help="closed-loop levels, comma-separated ('' for none)")
    parser.add_argument("--rate", default="", help="open-loop arrival rates (req/s), comma-separated")
    parser.add_argument("--count", type=int, default=2000, help="measured requests per level")
    parser.add_argument("--duration", type=float, default=0, help="seconds per level (0: --count only)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--orchestrator",
                        help="diffmesh-orchestrator binary (default: the one in --binary-dir)")
    parser.add_argument("--max-other-busy", type=float, default=None,
                        help="re-run a level while other processes kept more than this many "
                             "cores busy during it (a shared machine)")
    parser.add_argument("--retries", type=int, default=10, help="re-runs per level at most")
    parser.add_argument("--json-out", help="write every level's report (and CPU figures) here")
    parser.add_argument("--check", action="store_true", help="fail unless every level is clean")
    args = parser.parse_args()

    loadtest = procs.binary(args.binary_dir, "loadtest", "diffmesh-loadtest")
    stub_bin = procs.binary(args.binary_dir, "loadtest", "diffmesh-stub-stages")
    orch_bin = args.orchestrator or procs.binary(args.binary_dir, "services", "orchestrator",
                                                 "diffmesh-orchestrator")
    base = procs.free_base_port((0, 1))
    stub_addr = f"127.0.0.1:{base + 1}"
    target = f"127.0.0.1:{base}"
    stub = procs.Child([stub_bin, "--host=127.0.0.1", f"--port={base + 1}"])
    orch = None
    levels = []
    try:
        procs.wait_for_port(base + 1, 30, stub.process)
        orch = procs.Child([orch_bin, "--host=127.0.0.1", f"--port={base}",
                            f"--pipeline={os.path.join(HERE, 'trivial_pipeline.json')}",
                            f"--ar-address={stub_addr}", f"--encoder-address={stub_addr}",
                            f"--denoise-address={stub_addr}"])
        procs.wait_for_port(base, 30, orch.process)
        plan = [("closed", int(c)) for c in args.concurrency.split(",") if c.strip()]
        plan += [("open", float(r)) for r in args.rate.split(",") if r.strip()]
        for mode, value in plan:
            extra = [f"--concurrency={value}"] if mode == "closed" else [f"--rate={value}"]
            for attempt in range(args.retries + 1):
                report = measure(orch, stub, loadtest, target, extra, args)
                if args.max_other_busy is None or report["other_busy_cores"] <= args.max_other_busy:
                    break
                print(f"{mode} {value}: other processes kept {report['other_busy_cores']:.2f} cores "
                      f"busy; again ({attempt + 1}/{args.retries})", file=sys.stderr)
            report["attempts"] = attempt + 1
            label = f"{mode} {value}"
            if args.check:
                check(report, args, label)
            levels.append((label, report))
    finally:
        if orch is not None:
            orch.stop()
        stub.stop()

    print(f"orchestrator {orch_bin} on {target}, stages: diffmesh-stub-stages {stub_addr}; "
          f"{args.size}x{args.size}, {args.steps} step(s); {os.cpu_count()} CPUs")
    print("| load | requests | req/s | e2e p50 ms | e2e p99 ms | orch p50 ms | orch p99 ms "
          "| CPU ms/req orch / stub / loadtest | max in flight | errors | other busy cores |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, r in levels:
        lat = r["latency_seconds"]
        print(f"| {label} | {r['count']} | {r['throughput_rps']:.0f} | "
              f"{1e3 * lat['end_to_end']['p50']:.2f} | {1e3 * lat['end_to_end']['p99']:.2f} | "
              f"{1e3 * lat['orchestrator']['p50']:.2f} | {1e3 * lat['orchestrator']['p99']:.2f} | "
              f"{r['cpu_ms_per_request']['orchestrator']:.2f} / "
              f"{r['cpu_ms_per_request']['stub_stages']:.2f} / "
              f"{r['cpu_ms_per_request']['loadtest']:.2f} | {r['max_in_flight']} | {r['errors']} | "
              f"{r['other_busy_cores']:.2f} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump([{"load": label, **r} for label, r in levels], f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
