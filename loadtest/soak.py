#!/usr/bin/python3
"""Soak test: a real `diffmesh up` mesh under ~2x its capacity for a long time, with mixed sizes,
client cancellations, short deadlines and a stage killed midway; every request accounted for.

    nice -n 19 /usr/bin/python3 loadtest/soak.py --binary-dir build --duration 1800

1. Starts `diffmesh up --model glm-image-tiny --device cpu` on free loopback ports.
2. Measures its capacity: a closed loop (--capacity-concurrency requests in flight) of the same
   size mix for --capacity-seconds; capacity = OK requests per second (or --rate skips this).
3. Runs an open loop (Poisson arrivals) at --load-factor x capacity for --duration seconds:
   sizes from --sizes, a --cancel-share of requests cancelled by the client after a random
   delay, a --short-deadline-share with deadlines shorter than a typical request, the rest with
   --timeout. At each --kill-at fraction of the duration (and every --kill-every seconds) it
   SIGKILLs one stage process (--kill-stages, in turn) and lets `diffmesh up` restart it,
   recording when the stage reports SERVING again and when the first request started after the
   kill succeeds.
4. Samples the RSS (/proc/PID/status VmRSS) of every process of the mesh and every service's
   in-flight gauge every --rss-interval seconds; memory is judged by a fit of RSS against time
   and load (requests in flight) over the later half of each process's samples under load.
5. Drains, checks that every service's in-flight gauges are back to 0 and that a few plain
   requests succeed, then stops the mesh (SIGTERM) and prints a summary and one JSON line.

The soak fails (exit 1) on: a request still running --hang-margin seconds after its deadline
(a hang); a status other than OK, RESOURCE_EXHAUSTED, CANCELLED (only when the client
cancelled), DEADLINE_EXCEEDED (only for short-deadline or cancelled requests: a long-deadline
request that runs out its whole deadline is a stall) or UNAVAILABLE; any error without a
message; a RESOURCE_EXHAUSTED without a retry hint; a service restarted that the soak did not
kill; a stage that does not serve again within --restart-timeout; in-flight gauges not back to 0
after the drain; the orchestrator counting more requests in flight than the client has
outstanding for longer than --hang-margin; a failed request after the drain; `diffmesh up` not
stopping on SIGTERM; RSS growth at constant load beyond --max-growth-mib over the fitted window.
A stage holding more calls than the orchestrator has requests (calls it ended that the stage has
not noticed yet) is a warning. Exit 2: the mesh did not start.
"""

import argparse
import asyncio
import collections
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import procs  # noqa: E402

# Codes a soak request may end with; anything else (INTERNAL, UNKNOWN, ...) is a failure.
EXPECTED = {"OK", "RESOURCE_EXHAUSTED", "CANCELLED", "DEADLINE_EXCEEDED", "UNAVAILABLE"}
KINDS = ("normal", "cancel", "short_deadline", "video")
MIB = 1024.0


def parse_sizes(text):
    """"HxW:weight,..." -> [((h, w), weight)]."""
    sizes = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        size, _, weight = item.partition(":")
        h, w = size.lower().split("x")
        sizes.append(((int(h), int(w)), float(weight or 1)))
    if not sizes:
        raise ValueError("--sizes: no sizes")
    return sizes


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100) of a list; None when it is empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


# --- The mesh's processes ---------------------------------------------------------------------

def process_table():
    """{pid: (ppid, name)} of every process; name = argv[0]'s basename (+ " rank N")."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        name = os.path.basename(argv[0].decode(errors="replace")) if argv and argv[0] else "?"
        if name == "diffmesh" and len(argv) > 1 and argv[1] == b"up":
            name = "diffmesh up"
        for a in argv:
            if a.startswith(b"--rank=") and a != b"--rank=0":
                name += " rank " + a.split(b"=", 1)[1].decode()
        table[int(entry)] = (ppid, name)
    return table


def mesh_processes(root_pid):
    """{pid: name} of root_pid and all its descendants."""
    table = process_table()
    children = collections.defaultdict(list)
    for pid, (ppid, _) in table.items():
        children[ppid].append(pid)
    found, todo = {}, [root_pid]
    while todo:
        pid = todo.pop()
        if pid in table:
            found[pid] = table[pid][1]
            todo.extend(children[pid])
    return found


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def linear_fit(points):
    """Least-squares slope (per second) and intercept of [(t, v)]; (0, v) for < 3 points."""
    if len(points) < 3:
        return 0.0, (points[0][1] if points else 0.0)
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    if max(xs) == min(xs):
        return 0.0, ys[0]
    fit = statistics.linear_regression(xs, ys)
    return fit.slope, fit.intercept


def trend_fit(points):
    """Least-squares v = a + b*t + c*x over [(t, x, v)]: b, the trend in time with the load x
    (requests in flight) held fixed. A process's memory follows its load (more concurrent
    requests, more threads and allocator arenas holding buffers) and comes back when the load
    falls; a leak is what keeps rising at the same load. Falls back to the plain slope when
    the load did not vary."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mt = sum(p[0] for p in points) / n
    mx = sum(p[1] for p in points) / n
    mv = sum(p[2] for p in points) / n
    stt = sum((p[0] - mt) ** 2 for p in points)
    sxx = sum((p[1] - mx) ** 2 for p in points)
    stx = sum((p[0] - mt) * (p[1] - mx) for p in points)
    stv = sum((p[0] - mt) * (p[2] - mv) for p in points)
    sxv = sum((p[1] - mx) * (p[2] - mv) for p in points)
    det = stt * sxx - stx * stx
    if stt == 0:
        return 0.0
    if sxx == 0 or abs(det) <= 1e-9 * stt * sxx:
        return stv / stt
    return (stv * sxx - sxv * stx) / det


def metrics_in_flight(port):
    """The in-flight / waiting gauges and the heap gauges (diffmesh_heap_bytes) of one
    service's /metrics: {series: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    gauges = {}
    for line in text.splitlines():
        m = re.match(r"^(diffmesh_(?:stage_)?requests_(?:in_flight|waiting)|diffmesh_heap_bytes)"
                     r"(\{[^}]*\})?\s+(\S+)", line)
        if m:
            gauges[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return gauges


# --- The soak ---------------------------------------------------------------------------------

class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.sizes = parse_sizes(args.sizes)
        self.failures = []
        self.warnings = []
        self.records = []          # one dict per request, in start order
        self.outstanding = {}      # id -> record, while running
        self.kills = []
        self.rss = collections.defaultdict(list)  # (name, pid) -> [(t, kib)]
        self.t0 = time.monotonic()
        self.next_id = 0
        self.mesh = None
        self.pids = {}             # name -> pid, from `up`'s start-up lines
        self.video = False
        self.cancel_max = args.cancel_max_delay
        self.short_max = args.short_deadline_max
        self.phase = "start"
        self.soak_start = 0.0
        self.soak_end = None
        self.load = []             # (t, client requests outstanding, {service: in flight})
        self.heap = collections.defaultdict(list)  # service -> [(t, in use KiB, free KiB)]

    def now(self):
        return time.monotonic() - self.t0

    def fail(self, text):
        self.failures.append(text)
        print(f"[{self.now():8.1f}] FAILURE: {text}", flush=True)

    def warn(self, text):
        self.warnings.append(text)
        print(f"[{self.now():8.1f}] WARNING: {text}", flush=True)

    def log(self, text):
        print(f"[{self.now():8.1f}] {text}", flush=True)

    # -- mesh ------------------------------------------------------------------------------------

    def start_mesh(self):
        a = self.args
        cli = procs.binary(a.binary_dir, "services", "cli", "diffmesh")
        self.base = procs.free_base_port()
        self.target = f"127.0.0.1:{self.base}"
        argv = [cli, "up", f"--base-port={self.base}", f"--model={a.model}", "--device=cpu",
                *a.up_arg]
        self.log(f"starting {' '.join(argv)}")
        self.mesh = procs.Child(argv)
        self.mesh.wait_for_output("mesh is up", a.start_timeout)
        for m in re.finditer(r"^(\w+)\s+127\.0\.0\.1:(\d+) \(pid (\d+)\)", self.mesh.log(), re.M):
            self.pids[m.group(1)] = int(m.group(3))
        self.log(f"mesh is up on {self.target}: {self.pids}")

    def mesh_log_count(self, text):
        return self.mesh.log().count(text)

    # -- requests --------------------------------------------------------------------------------

    def plan(self, mixed):
        """One request's parameters: size, steps, kind, deadline, cancel delay."""
        a = self.args
        total = sum(w for _, w in self.sizes)
        pick = self.rng.uniform(0, total)
        for (h, w), weight in self.sizes:
            pick -= weight
            if pick <= 0:
                break
        spec = {"id": self.next_id, "height": h, "width": w, "steps": a.steps,
                "model": a.model, "kind": "normal", "deadline": a.timeout, "cancel_after": None,
                "format": self.rng.choice(a.formats.split(","))}
        self.next_id += 1
        if mixed:
            r = self.rng.random()
            if r < a.cancel_share:
                spec["kind"] = "cancel"
                spec["cancel_after"] = self.rng.uniform(0.0, self.cancel_max)
            elif r < a.cancel_share + a.short_deadline_share:
                spec["kind"] = "short_deadline"
                spec["deadline"] = self.rng.uniform(0.05, self.short_max)
            elif self.video and r < a.cancel_share + a.short_deadline_share + a.video_share:
                spec.update(kind="video", model=a.video_model, height=a.video_size[0],
                            width=a.video_size[1], num_frames=a.video_frames, format="mp4")
        return spec

    async def run_request(self, client, spec):
        import diffmesh  # noqa: F401 (on sys.path once main() set it up)
        from diffmesh import DiffmeshError
        rec = dict(spec, phase=self.phase, start=self.now(), end=None, code=None, message="",
                   first_event=None)
        self.records.append(rec)
        self.outstanding[rec["id"]] = rec
        loop = asyncio.get_running_loop()
        timer = None
        try:
            params = dict(model=spec["model"], height=spec["height"], width=spec["width"],
                          steps=spec["steps"], seed=spec["id"], output_format=spec["format"])
            if "num_frames" in spec:
                params["num_frames"] = spec["num_frames"]
            stream = client.stream(f"soak request {spec['id']}: a lighthouse at dusk",
                                   timeout=spec["deadline"], **params)
            if spec["cancel_after"] is not None:
                timer = loop.call_later(spec["cancel_after"], stream.cancel)
            async with stream:
                async for event in stream:
                    if rec["first_event"] is None:
                        rec["first_event"] = self.now() - rec["start"]
            rec["code"] = "OK" if stream.result is not None else "NO_RESULT"
        except DiffmeshError as e:
            rec["code"], rec["message"] = e.code.name, e.message
        except asyncio.CancelledError:
            rec["code"], rec["message"] = "ABANDONED", "still running when the soak ended"
        except Exception as e:  # noqa: BLE001 (every outcome is recorded)
            rec["code"], rec["message"] = "CLIENT_EXCEPTION", repr(e)
        finally:
            if timer is not None:
                timer.cancel()
            rec["end"] = self.now()
            rec["latency"] = rec["end"] - rec["start"]
            self.outstanding.pop(rec["id"], None)
            self.check(rec)
        return rec

    def check(self, rec):
        """Flags an unexpected outcome of one finished request."""
        code, kind = rec["code"], rec["kind"]
        what = (f"request {rec['id']} ({kind}, {rec['height']}x{rec['width']}, deadline "
                f"{rec['deadline']:.1f} s, {rec['latency']:.1f} s)")
        if rec.get("hung"):
            return  # already reported by the watchdog
        if code not in EXPECTED:
            self.fail(f"{what}: unexpected {code}: {rec['message']!r}")
        elif code != "OK" and not rec["message"].strip():
            self.fail(f"{what}: {code} without a message")
        elif code == "CANCELLED" and kind != "cancel":
            self.fail(f"{what}: CANCELLED without the client cancelling: {rec['message']!r}")
        elif code == "DEADLINE_EXCEEDED" and kind not in ("short_deadline", "cancel"):
            self.fail(f"{what}: ran out its whole deadline (a stall): {rec['message']!r}")
        elif code == "RESOURCE_EXHAUSTED" and "retry" not in rec["message"].lower():
            self.fail(f"{what}: RESOURCE_EXHAUSTED without a retry hint: {rec['message']!r}")

    async def watchdog(self):
        """Flags requests still running --hang-margin seconds past their deadline."""
        while True:
            now = self.now()
            for rec in list(self.outstanding.values()):
                if not rec.get("hung") and now > rec["start"] + rec["deadline"] + self.args.hang_margin:
                    rec["hung"] = True
                    self.fail(f"request {rec['id']} ({rec['kind']}, {rec['height']}x{rec['width']}) "
                              f"still running {now - rec['start']:.1f} s after its start, deadline "
                              f"{rec['deadline']:.1f} s: a hang")
            await asyncio.sleep(1.0)

    async def sample_rss(self):
        while True:
            now = self.now()
            for pid, name in mesh_processes(self.mesh.pid).items():
                kib = rss_kib(pid)
                if kib is not None:
                    self.rss[(name, pid)].append((now, kib))
            kib = rss_kib(os.getpid())
            if kib is not None:
                self.rss[("soak client", os.getpid())].append((now, kib))
            # The orchestrator's count of requests it runs or queues, beside the client's: work
            # the server keeps after the client gave up shows as a lasting excess.
            outstanding = len(self.outstanding)
            in_flight = {}
            for service, port in self.metrics_ports().items():
                try:
                    gauges = await asyncio.to_thread(metrics_in_flight, port)
                except OSError:
                    continue  # e.g. the service is being restarted
                in_flight[service] = sum(v for k, v in gauges.items() if re.match(
                    r"diffmesh_(stage_)?requests_in_flight", k))
                in_use = gauges.get('diffmesh_heap_bytes{state="in_use"}')
                free = gauges.get('diffmesh_heap_bytes{state="free"}')
                if in_use is not None and free is not None:
                    self.heap[service].append((now, in_use / 1024, free / 1024))
            self.load.append((now, outstanding, in_flight))
            await asyncio.sleep(self.args.rss_interval)

    # -- phases ----------------------------------------------------------------------------------

    async def capacity(self, client):
        """Closed loop of plain requests (the size mix): OK per second, and their p50 latency."""
        a = self.args
        self.phase = "warmup"
        for (h, w), _ in self.sizes:  # each size once (first-request allocations)
            await self.run_request(client, dict(self.plan(False), height=h, width=w))
        self.phase = "capacity"
        start = self.now()
        end = start + a.capacity_seconds
        done = []

        async def worker():
            while self.now() < end:
                done.append(await self.run_request(client, self.plan(False)))

        await asyncio.gather(*[worker() for _ in range(a.capacity_concurrency)])
        elapsed = self.now() - start
        ok = [r for r in done if r["code"] == "OK"]
        if not ok:
            raise RuntimeError(f"no request succeeded while measuring capacity: "
                               f"{collections.Counter(r['code'] for r in done)}")
        rate = len(ok) / elapsed
        p50 = statistics.median(r["latency"] for r in ok)
        self.log(f"capacity: {len(ok)} OK of {len(done)} in {elapsed:.1f} s at "
                 f"{a.capacity_concurrency} in flight = {rate:.3f} req/s, p50 {p50:.2f} s")
        return rate, p50, len(done), elapsed

    def find_stage_pid(self, stage):
        """The pid of diffmesh-<stage> that `diffmesh up` started (its direct child)."""
        for pid, name in mesh_processes(self.mesh.pid).items():
            if name == f"diffmesh-{stage}" and process_table().get(pid, (0,))[0] == self.mesh.pid:
                return pid
        return None

    async def kill_stage(self, stage, client):
        pid = self.find_stage_pid(stage)
        if pid is None:
            self.fail(f"no diffmesh-{stage} process to kill")
            return
        serving_before = self.mesh_log_count(f"diffmesh-{stage} is serving again")
        kill = {"stage": stage, "pid": pid, "at": self.now(), "in_flight": len(self.outstanding),
                "new_pid": None, "restarted_after": None, "serving_after": None,
                "first_ok_after": None}
        self.kills.append(kill)
        os.kill(pid, signal.SIGKILL)
        self.log(f"SIGKILL diffmesh-{stage} (pid {pid}) with {kill['in_flight']} requests in flight")
        deadline = kill["at"] + self.args.restart_timeout
        while self.now() < deadline:
            await asyncio.sleep(0.5)
            if kill["new_pid"] is None:
                new = self.find_stage_pid(stage)
                if new is not None and new != pid:
                    kill["new_pid"], kill["restarted_after"] = new, self.now() - kill["at"]
            if self.mesh_log_count(f"diffmesh-{stage} is serving again") > serving_before:
                kill["serving_after"] = self.now() - kill["at"]
                self.log(f"diffmesh-{stage} serves again (pid {kill['new_pid']}) "
                         f"{kill['serving_after']:.1f} s after the kill")
                return
        self.fail(f"diffmesh-{stage} did not serve again within {self.args.restart_timeout} s "
                  f"of its kill")

    async def open_loop(self, client, rate):
        a = self.args
        self.phase = "soak"
        start = self.now()
        self.soak_start = start
        end = start + a.duration
        kill_times = sorted(start + f * a.duration for f in a.kill_at)
        if a.kill_every > 0:
            t = start + a.kill_every
            while t < end:
                kill_times.append(t)
                t += a.kill_every
            kill_times.sort()
        stages = a.kill_stages
        tasks = set()
        kill_tasks = []
        next_arrival = start + self.rng.expovariate(rate)
        last_report = start
        while True:
            now = self.now()
            if kill_times and now >= kill_times[0]:
                kill_times.pop(0)
                stage = stages[len(kill_tasks) % len(stages)]
                kill_tasks.append(asyncio.create_task(self.kill_stage(stage, client)))
            if now >= end:
                break
            if now >= next_arrival:
                task = asyncio.create_task(self.run_request(client, self.plan(True)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_arrival += self.rng.expovariate(rate)
                continue
            if now - last_report >= 60:
                last_report = now
                self.progress(start)
            await asyncio.sleep(min(0.2, max(0.0, next_arrival - now)))
        self.soak_end = self.now()
        self.log(f"load stopped after {self.now() - start:.0f} s; draining "
                 f"{len(self.outstanding)} requests")
        self.phase = "drain"
        await asyncio.gather(*kill_tasks)
        # Every request ends by its deadline (+ the margin the watchdog allows).
        limit = max([r["start"] + r["deadline"] for r in self.outstanding.values()] + [0])
        while self.outstanding and self.now() < limit + a.hang_margin + 5:
            await asyncio.sleep(0.5)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def progress(self, start):
        soak = [r for r in self.records if r["phase"] == "soak"]
        ended = collections.Counter(r["code"] for r in soak if r["code"] is not None)
        rss = sum(v[-1][1] for (name, pid), v in self.rss.items() if name != "soak client"
                  and v and v[-1][0] > self.now() - 2 * self.args.rss_interval)
        self.log(f"{self.now() - start:.0f} s: {len(soak)} started, {len(self.outstanding)} in "
                 f"flight, {dict(ended)}; mesh RSS {rss / MIB:.0f} MiB")

    def metrics_ports(self):
        """Each service's /metrics port (`diffmesh up` puts it 10 above its gRPC port)."""
        return {"orchestrator": self.base + 10, "ar": self.base + 11, "encoder": self.base + 12,
                "denoise": self.base + 13}

    async def after_drain(self, client):
        """In-flight gauges back to 0, then a few plain requests succeed."""
        self.phase = "after"
        await asyncio.sleep(5)
        gauges = {}
        for name, port in self.metrics_ports().items():
            try:
                values = await asyncio.to_thread(metrics_in_flight, port)
            except OSError as e:
                self.fail(f"/metrics of {name} (port {port}): {e}")
                continue
            gauges[name] = values
            busy = {k: v for k, v in values.items()
                    if v != 0 and not k.startswith("diffmesh_heap_bytes")}
            if busy:
                self.fail(f"{name} still reports work in flight after the drain: {busy}")
        for _ in range(self.args.final_requests):
            rec = await self.run_request(client, self.plan(False))
            if rec["code"] != "OK":
                self.fail(f"request {rec['id']} after the drain: {rec['code']}: {rec['message']!r}")
        return gauges

    async def run(self):
        import diffmesh.aio
        a = self.args
        client = diffmesh.aio.Client(self.target, timeout=a.timeout)
        tasks = [asyncio.create_task(self.watchdog()), asyncio.create_task(self.sample_rss())]
        try:
            models = [m.name for m in await client.list_models()]
            if a.video_share > 0:
                self.video = a.video_model in models
                if not self.video:
                    self.log(f"{a.video_model} is not served ({models}): no video requests")
            if a.rate:
                rate, cap = a.rate, None
            else:
                cap_rate, p50, cap_count, cap_elapsed = await self.capacity(client)
                rate = a.load_factor * cap_rate
                cap = {"rate": cap_rate, "p50": p50, "requests": cap_count, "seconds": cap_elapsed,
                       "concurrency": a.capacity_concurrency}
                # Cancel somewhere between the start and a bit past a typical request's end;
                # short deadlines up to a typical request's latency.
                if a.cancel_max_delay <= 0:
                    self.cancel_max = 1.5 * p50
                if a.short_deadline_max <= 0:
                    self.short_max = p50
            self.cancel_max = self.cancel_max if self.cancel_max > 0 else 5.0
            self.short_max = self.short_max if self.short_max > 0 else 2.0
            self.rate, self.capacity_info = rate, cap
            self.log(f"open loop at {rate:.3f} req/s for {a.duration:.0f} s (cancel delays "
                     f"0..{self.cancel_max:.1f} s, short deadlines 0.05..{self.short_max:.1f} s)")
            await self.open_loop(client, rate)
            self.gauges = await self.after_drain(client)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()

    def stop_mesh(self):
        restarts = self.mesh_log_count("diffmesh up: restarted diffmesh-")
        process = self.mesh.process
        if process.poll() is not None:
            self.fail(f"diffmesh up exited on its own with {process.returncode}")
        else:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.fail("diffmesh up did not stop within 60 s of SIGTERM")
                for pid in mesh_processes(process.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                process.wait()
        log = self.mesh.log()
        if restarts != len(self.kills):
            self.fail(f"diffmesh up restarted services {restarts} times, the soak killed "
                      f"{len(self.kills)}: {[l for l in log.splitlines() if 'restart' in l]}")
        return log


# --- The report -------------------------------------------------------------------------------

def rss_report(soak, args):
    """Per process: start / peak / end RSS, and a line fitted to the later half of its samples
    under load (the open loop; a process's first samples are its warm-up, and the drain
    after the load frees memory that would hide growth). A window shorter than
    --min-fit-window is not judged: a short or freshly restarted series is mostly warm-up."""
    rows = []
    end = soak.soak_end if soak.soak_end is not None else float("inf")
    load_at = {t: in_flight for t, _, in_flight in soak.load}  # sampled with the RSS, same t
    for (name, pid), series in sorted(soak.rss.items(), key=lambda kv: (kv[0][0], kv[1][0][0])):
        kib = [v for _, v in series]
        loaded = [p for p in series if soak.soak_start <= p[0] <= end]
        window = loaded[len(loaded) // 2:]
        slope, _ = linear_fit(window)
        span = window[-1][0] - window[0][0] if window else 0.0
        # The load beside each sample: the service's own in-flight gauge, else the mesh's
        # (the orchestrator's); samples without one are left out of the adjusted fit.
        service = name[len("diffmesh-"):] if name.startswith("diffmesh-") else "orchestrator"
        with_load = [(t, load_at[t][service], v) for t, v in window
                     if service in load_at.get(t, {})]
        adjusted = trend_fit(with_load) if len(with_load) >= 3 else slope
        growth_mib = adjusted * span / MIB
        verdict = "ok"
        if len(window) < 3 or span < args.min_fit_window:
            verdict = f"not judged ({span:.0f} s window)"
        elif growth_mib > args.max_growth_mib:
            verdict = "GROWS"
            if name != "soak client":
                soak.fail(f"{name} (pid {pid}) RSS grew {growth_mib:.1f} MiB at constant load over "
                          f"the last {span:.0f} s of its samples under load (limit "
                          f"{args.max_growth_mib} MiB)")
        # The service's heap gauges over the same window: malloc's bytes in use (a leak grows
        # here) and free bytes it keeps (fragmentation grows here, in RSS but not in use).
        heap = [h for h in soak.heap.get(service, []) if window and window[0][0] <= h[0] <= window[-1][0]
                and name == f"diffmesh-{service}"]
        in_use_growth = free_growth = None
        if len(heap) >= 3 and heap[-1][0] > heap[0][0]:
            heap_span = heap[-1][0] - heap[0][0]
            with_load_heap = [(t, load_at[t][service], u) for t, u, _ in heap
                              if service in load_at.get(t, {})]
            in_use_growth = (trend_fit(with_load_heap) if len(with_load_heap) >= 3
                             else linear_fit([(t, u) for t, u, _ in heap])[0]) * heap_span / MIB
            free_growth = linear_fit([(t, f) for t, _, f in heap])[0] * heap_span / MIB
        rows.append({"process": name, "pid": pid, "samples": len(series),
                     "from": series[0][0], "to": series[-1][0],
                     "start_mib": kib[0] / MIB, "peak_mib": max(kib) / MIB, "end_mib": kib[-1] / MIB,
                     "window_s": span, "slope_mib_per_h": slope * 3600 / MIB,
                     "load_adjusted_mib_per_h": adjusted * 3600 / MIB,
                     "window_growth_mib": growth_mib,
                     "heap_in_use_end_mib": heap[-1][1] / MIB if heap else None,
                     "heap_free_end_mib": heap[-1][2] / MIB if heap else None,
                     "heap_in_use_growth_mib": in_use_growth, "heap_free_growth_mib": free_growth,
                     "verdict": verdict})
    return rows


def per_minute(records, start, load):
    rows = collections.OrderedDict()
    for r in records:
        if r["phase"] != "soak" or r["end"] is None:
            continue
        m = int((r["end"] - start) // 60)
        row = rows.setdefault(m, {"minute": m, "ended": 0, "codes": collections.Counter(), "ok_lat": []})
        row["ended"] += 1
        row["codes"][r["code"]] += 1
        if r["code"] == "OK":
            row["ok_lat"].append(r["latency"])
    out = []
    for m in sorted(rows):
        row = rows[m]
        lat = row["ok_lat"]
        samples = [x for x in load if start + 60 * m <= x[0] < start + 60 * (m + 1)]
        client = [c for _, c, _ in samples]
        server = [s["orchestrator"] for _, _, s in samples if "orchestrator" in s]
        out.append({"minute": m, "ended": row["ended"], "codes": dict(row["codes"]),
                    "client_in_flight_max": max(client) if client else None,
                    "orchestrator_in_flight_max": max(server) if server else None,
                    "ok_p50": percentile(lat, 50), "ok_p90": percentile(lat, 90),
                    "ok_p99": percentile(lat, 99), "ok_max": percentile(lat, 100)})
    return out


def lingering_work(soak, args):
    """Per service, the longest stretch of samples in which it counted more requests in flight
    than the level above it (the orchestrator: the client's outstanding requests; a stage: the
    orchestrator's): work kept after the client cancelled or its deadline passed. Longer than
    --hang-margin fails. {service: {"longest_s", "max"}}."""
    out = {}
    for service in ("orchestrator", "ar", "encoder", "denoise"):
        longest, excess_max, since = 0.0, 0, None
        for t, client, in_flight in soak.load:
            above = client if service == "orchestrator" else in_flight.get("orchestrator")
            mine = in_flight.get(service)
            excess = mine - above if mine is not None and above is not None else 0
            excess_max = max(excess_max, excess)
            if excess > 0:
                since = t if since is None else since
                longest = max(longest, t - since)
            else:
                since = None
        out[service] = {"longest_s": longest, "max": excess_max}
        if longest > args.hang_margin:
            if service == "orchestrator":  # requests the client no longer waits for
                soak.fail(f"the orchestrator counted up to {excess_max:.0f} more requests in "
                          f"flight than the client had outstanding for {longest:.0f} s")
            else:
                # Calls the orchestrator has ended that the stage still holds: no client waits
                # on them (the drain's check that every gauge returns to 0 catches a leak), but
                # they hold a thread and their inputs until the stage notices.
                soak.warn(f"{service} counted up to {excess_max:.0f} more calls in flight than "
                          f"the orchestrator has requests for {longest:.0f} s")
    return out


def fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


def report(soak, args, rss_rows, minutes):
    soak_recs = [r for r in soak.records if r["phase"] == "soak"]
    start = soak.soak_start
    by_kind = collections.defaultdict(collections.Counter)
    for r in soak_recs:
        by_kind[r["kind"]][r["code"]] += 1
    codes = sorted({c for k in by_kind.values() for c in k})
    print()
    print(f"## Soak: {len(soak_recs)} requests in {args.duration:.0f} s at {soak.rate:.3f} req/s "
          f"({args.load_factor}x capacity {fmt(soak.capacity_info['rate'] if soak.capacity_info else None, 3)})")
    print()
    print("| kind | requests | " + " | ".join(codes) + " |")
    print("|---|---|" + "---|" * len(codes))
    for kind in KINDS:
        if kind in by_kind:
            c = by_kind[kind]
            print(f"| {kind} | {sum(c.values())} | " + " | ".join(str(c.get(x, 0)) for x in codes) + " |")
    ok = [r["latency"] for r in soak_recs if r["code"] == "OK"]
    print(f"\nOK latency: p50 {fmt(percentile(ok, 50))} s, p90 {fmt(percentile(ok, 90))} s, "
          f"p99 {fmt(percentile(ok, 99))} s, max {fmt(percentile(ok, 100))} s over {len(ok)}")
    rejected = [r["latency"] for r in soak_recs if r["code"] == "RESOURCE_EXHAUSTED"]
    if rejected:
        print(f"RESOURCE_EXHAUSTED answered in: p50 {percentile(rejected, 50) * 1e3:.1f} ms, "
              f"max {max(rejected) * 1e3:.1f} ms")
    print("In flight above the level in front (orchestrator vs client, stage vs orchestrator; "
          f"samples every {args.rss_interval:.0f} s): " + ", ".join(
              f"{k} longest {v['longest_s']:.0f} s, by at most {v['max']:.0f}"
              for k, v in soak.linger.items()))
    print("\n| minute | ended | OK | RESOURCE_EXHAUSTED | other | OK p50 s | OK p90 s | OK p99 s | "
          "OK max s | in flight: client / orchestrator (max) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m in minutes:
        c = m["codes"]
        other = sum(v for k, v in c.items() if k not in ("OK", "RESOURCE_EXHAUSTED"))
        print(f"| {m['minute']} | {m['ended']} | {c.get('OK', 0)} | {c.get('RESOURCE_EXHAUSTED', 0)} | "
              f"{other} | {fmt(m['ok_p50'])} | {fmt(m['ok_p90'])} | {fmt(m['ok_p99'])} | {fmt(m['ok_max'])} | "
              f"{m['client_in_flight_max']} / {fmt(m['orchestrator_in_flight_max'], 0)} |")
    if soak.kills:
        print("\n| kill at s | stage | pid → new pid | requests in flight | restarted after s | "
              "serving after s | first OK after s | UNAVAILABLE, started > 1 s after serving |")
        print("|---|---|---|---|---|---|---|---|")
        for k in soak.kills:
            print(f"| {k['at'] - start:.1f} | {k['stage']} | {k['pid']} → {k['new_pid']} | {k['in_flight']} | "
                  f"{fmt(k['restarted_after'], 1)} | {fmt(k['serving_after'], 1)} | "
                  f"{fmt(k['first_ok_after'], 1)} | {k.get('unavailable_after_serving', '-')} |")
    print("\n| process | pid | samples | RSS start MiB | peak MiB | end MiB | fit window s | "
          "slope MiB/h | at constant load MiB/h | growth in window at constant load MiB | "
          "heap in use / free at end MiB | heap growth in window: in use at constant load / free MiB | "
          "verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rss_rows:
        print(f"| {r['process']} | {r['pid']} | {r['samples']} | {r['start_mib']:.1f} | {r['peak_mib']:.1f} | "
              f"{r['end_mib']:.1f} | {r['window_s']:.0f} | {r['slope_mib_per_h']:+.1f} | "
              + (f"{r['load_adjusted_mib_per_h']:+.1f} | {r['window_growth_mib']:+.1f} | "
                 if not r["verdict"].startswith("not judged") else "- | - | ")
              + f"{fmt(r['heap_in_use_end_mib'], 1)} / {fmt(r['heap_free_end_mib'], 1)} | "
              + f"{fmt(r['heap_in_use_growth_mib'], 1)} / {fmt(r['heap_free_growth_mib'], 1)} | "
              + f"{r['verdict']} |")
    print()
    for w in soak.warnings:
        print(f"WARNING: {w}")
    if soak.failures:
        print(f"FAILED: {len(soak.failures)} problem(s):")
        for f in soak.failures:
            print(f"  - {f}")
    else:
        judged = sum(1 for r in rss_rows if r["verdict"] == "ok")
        print(f"PASSED: every request ended with an expected status, none hung; RSS growth judged "
              f"for {judged} of {len(rss_rows)} process series (the others' windows were too short)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary-dir", default="build")
    p.add_argument("--model", default="glm-image-tiny")
    p.add_argument("--up-arg", action="append", default=[], help="extra `diffmesh up` argument")
    p.add_argument("--start-timeout", type=float, default=600)
    p.add_argument("--duration", type=float, default=1800, help="seconds of open-loop load")
    p.add_argument("--load-factor", type=float, default=2.0, help="arrival rate / capacity")
    p.add_argument("--rate", type=float, default=0, help="arrival rate (req/s); skips the capacity run")
    p.add_argument("--capacity-seconds", type=float, default=120)
    p.add_argument("--capacity-concurrency", type=int, default=4)
    p.add_argument("--sizes", default="256x256:4,128x128:2,512x512:1,384x512:1",
                   help="HxW:weight,... (glm-image-tiny: multiples of 32 in 64..512)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--formats", default="png,webp,jpeg")
    p.add_argument("--timeout", type=float, default=300, help="deadline of ordinary requests (s)")
    p.add_argument("--cancel-share", type=float, default=0.15)
    p.add_argument("--cancel-max-delay", type=float, default=0,
                   help="cancel after uniform(0, this) s (0: 1.5x the capacity run's p50)")
    p.add_argument("--short-deadline-share", type=float, default=0.15)
    p.add_argument("--short-deadline-max", type=float, default=0,
                   help="short deadlines uniform(0.05, this) s (0: the capacity run's p50)")
    p.add_argument("--video-share", type=float, default=0,
                   help="share of --video-model requests, if the mesh serves that model")
    p.add_argument("--video-model", default="ltx2-tiny")
    p.add_argument("--video-size", default="64x64")
    p.add_argument("--video-frames", type=int, default=9)
    p.add_argument("--kill-stages", default="denoise", help="stages to SIGKILL, in turn")
    p.add_argument("--kill-at", default="0.5", help="fractions of --duration at which to kill")
    p.add_argument("--kill-every", type=float, default=0, help="also kill every N s (0: off)")
    p.add_argument("--restart-timeout", type=float, default=300)
    p.add_argument("--hang-margin", type=float, default=30,
                   help="seconds past its deadline after which a running request is a hang")
    p.add_argument("--rss-interval", type=float, default=10)
    p.add_argument("--max-growth-mib", type=float, default=64,
                   help="RSS rise at constant load (fitted over the later half of each process's "
                   "samples under load) that fails")
    p.add_argument("--min-fit-window", type=float, default=300,
                   help="seconds of samples under load (later half) a growth verdict needs")
    p.add_argument("--final-requests", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--records-out", help="write every request's record, the RSS and in-flight "
                   "samples here (JSON lines)")
    args = p.parse_args()
    args.kill_at = [float(x) for x in args.kill_at.split(",") if x.strip()]
    args.kill_stages = [s for s in args.kill_stages.split(",") if s.strip()]
    args.video_size = tuple(int(v) for v in args.video_size.lower().split("x"))

    # The SDK: its sources and the generated protobuf modules in the build tree.
    sys.path[:0] = [os.path.join(REPO, "sdk", "python"), os.path.join(args.binary_dir, "sdk", "python")]

    soak = Soak(args)
    soak.rate, soak.capacity_info, soak.gauges = 0.0, None, {}
    try:
        soak.start_mesh()
    except Exception as e:  # noqa: BLE001
        print(f"the mesh did not start: {e}", file=sys.stderr)
        if soak.mesh is not None:
            soak.mesh.stop()
        return 2
    crashed = None
    try:
        asyncio.run(soak.run())
    except Exception as e:  # noqa: BLE001 (reported, then the mesh is stopped)
        crashed = repr(e)
        soak.fail(f"the soak itself failed: {crashed}")
    finally:
        mesh_log = soak.stop_mesh()
        soak.mesh.log_file.close()
        os.unlink(soak.mesh.log_file.name)
    soak_recs = [r for r in soak.records if r["phase"] == "soak"]
    start = soak.soak_start
    for i, k in enumerate(soak.kills):
        next_kill = soak.kills[i + 1]["at"] if i + 1 < len(soak.kills) else float("inf")
        after = [r for r in soak_recs if r["start"] >= k["at"] and r["code"] == "OK"]
        if after:
            k["first_ok_after"] = min(r["end"] for r in after) - k["at"]
        # Requests started once the stage served again that still failed UNAVAILABLE before
        # the next kill: the orchestrator's channel to the restarted stage was slow to reconnect.
        if k["serving_after"] is not None:
            back = k["at"] + k["serving_after"]
            k["unavailable_after_serving"] = sum(
                1 for r in soak_recs if r["code"] == "UNAVAILABLE"
                and r["start"] >= back + 1.0 and r["end"] < next_kill)
    rss_rows = rss_report(soak, args)
    soak.linger = lingering_work(soak, args)
    minutes = per_minute(soak.records, start, soak.load)
    report(soak, args, rss_rows, minutes)
    if args.records_out:
        with open(args.records_out, "w") as f:
            for r in soak.records:
                f.write(json.dumps(r) + "\n")
            # The raw samples, for a second look at a verdict.
            for (name, pid), series in soak.rss.items():
                f.write(json.dumps({"rss": name, "pid": pid, "samples": series}) + "\n")
            f.write(json.dumps({"load": soak.load}) + "\n")
    unexpected_lines = [l for l in mesh_log.splitlines()
                        if re.search(r"restart|died|exited|signal", l)]
    summary = {
        "soak": "failed" if soak.failures else "passed",
        "failures": soak.failures,
        "warnings": soak.warnings,
        "duration_s": args.duration, "rate_rps": soak.rate, "load_factor": args.load_factor,
        "capacity": soak.capacity_info,
        "requests": len(soak_recs),
        "by_kind": {k: dict(collections.Counter(r["code"] for r in soak_recs if r["kind"] == k))
                    for k in KINDS if any(r["kind"] == k for r in soak_recs)},
        "hangs": sum(1 for r in soak.records if r.get("hung")),
        "kills": [dict(k, at=k["at"] - start) for k in soak.kills],
        "excess_in_flight": soak.linger,
        "rss": rss_rows, "per_minute": minutes, "gauges_after_drain": soak.gauges,
        "mesh_log_supervision": unexpected_lines[-20:],
    }
    print(json.dumps(summary))
    return 1 if soak.failures else 0


if __name__ == "__main__":
    sys.exit(main())
