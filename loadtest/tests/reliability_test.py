#!/usr/bin/env python3
"""The orchestrator under stage failures and overload, over diffmesh-stub-stages (no LibTorch):

* reconnect: the stages stop for a few seconds and come back; the next request succeeds within a
  few seconds (the stage channels' reconnect backoff is bounded, grpc_stage_client.cc);
* health: the orchestrator's GenerationService reports NOT_SERVING until the stages serve, and
  again while they are down (diffmesh-loadtest --wait_for_server waits for it);
* stage token: stages started with --stage-token-file answer an orchestrator without the token
  UNAUTHENTICATED, and serve one that presents it;
* describe: stages that describe themselves as serving another model than the pipeline's make
  the orchestrator exit with 2 at start-up, naming the model; the normal config serves;
* admission: with the stub's denoise slowed down (--denoise-step-ms), more concurrent requests
  than --max-queued-requests are answered RESOURCE_EXHAUSTED with a retry hint, at once, while
  the admitted ones succeed.

    python3 loadtest/tests/reliability_test.py --binary-dir build
"""

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import procs  # noqa: E402

ORCHESTRATOR = None  # --orchestrator
PIPELINE = os.path.join(os.path.dirname(HERE), "trivial_pipeline.json")


def loadtest_argv(binary_dir, target, *extra):
    return [procs.binary(binary_dir, "loadtest", "diffmesh-loadtest"), f"--target={target}",
            "--json", "--height=64", "--width=64", "--steps=2", "--seed=1", "--prompt=reliability",
            "--timeout=30", "--wait_for_server=0", *extra]


def loadtest(binary_dir, target, *extra, timeout=60):
    argv = loadtest_argv(binary_dir, target, *extra)
    out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         timeout=timeout)
    if out.returncode not in (0, 1):
        raise RuntimeError(f"diffmesh-loadtest failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout)


class Mesh:
    """diffmesh-stub-stages on base+1, the orchestrator on base."""

    def __init__(self, binary_dir, *orchestrator_flags, step_ms=0, stub=True, stub_flags=()):
        self.binary_dir = binary_dir
        self.step_ms = step_ms
        self.stub_flags = list(stub_flags)
        self.base = procs.free_base_port((0, 1))
        self.target = f"127.0.0.1:{self.base}"
        self.stub = None
        if stub:
            self.start_stub()
        stub_addr = f"127.0.0.1:{self.base + 1}"
        self.orch = procs.Child([
            ORCHESTRATOR or procs.binary(binary_dir, "services", "orchestrator",
                                         "diffmesh-orchestrator"),
            "--host=127.0.0.1", f"--port={self.base}", f"--pipeline={PIPELINE}",
            f"--ar-address={stub_addr}", f"--encoder-address={stub_addr}",
            f"--denoise-address={stub_addr}", *orchestrator_flags])
        procs.wait_for_port(self.base, 30, self.orch.process)

    def start_stub(self):
        self.stub = procs.Child([procs.binary(self.binary_dir, "loadtest", "diffmesh-stub-stages"),
                                 "--host=127.0.0.1", f"--port={self.base + 1}",
                                 f"--denoise-step-ms={self.step_ms}", *self.stub_flags])
        procs.wait_for_port(self.base + 1, 30, self.stub.process)

    def stop_stub(self):
        self.stub.stop()
        self.stub = None

    def close(self):
        self.orch.stop()
        if self.stub is not None:
            self.stub.stop()


def test_reconnect(binary_dir):
    mesh = Mesh(binary_dir)
    try:
        r = loadtest(binary_dir, mesh.target, "--count=2")
        assert r["ok"] == 2, f"before the restart: {r['errors_by_code']} {r['first_error']}"
        mesh.stop_stub()
        # Requests while the stages are down fail (UNAVAILABLE), each a connection attempt that
        # grows gRPC's backoff; 8 s of them would push gRPC's default backoff past 10 s.
        end = time.monotonic() + 8
        failed = 0
        while time.monotonic() < end:
            r = loadtest(binary_dir, mesh.target, "--count=1")
            assert r["ok"] == 0, "a request succeeded with the stages down"
            failed += 1
            time.sleep(0.3)
        mesh.start_stub()
        restarted = time.monotonic()
        while True:
            r = loadtest(binary_dir, mesh.target, "--count=1")
            if r["ok"] == 1:
                break
            waited = time.monotonic() - restarted
            assert waited < 5, (f"no request succeeded {waited:.1f} s after the stages came back: "
                                f"{r['errors_by_code']} {r['first_error']}")
            time.sleep(0.1)
        print(f"reconnect: {failed} requests failed while the stages were down; the first "
              f"succeeded {time.monotonic() - restarted:.2f} s after they were back")
    finally:
        mesh.close()


def wait_for_server(binary_dir, target, seconds):
    """diffmesh-loadtest's wait for GenerationService SERVING, then one request: its exit code
    (2: not serving in time) and how long it took."""
    start = time.monotonic()
    # The later --wait_for_server wins over loadtest_argv's own.
    out = subprocess.run(loadtest_argv(binary_dir, target, "--count=1", f"--wait_for_server={seconds}"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    return out.returncode, time.monotonic() - start, out.stderr


def test_health(binary_dir):
    mesh = Mesh(binary_dir, stub=False)
    try:
        code, _, err = wait_for_server(binary_dir, mesh.target, 2)
        assert code == 2 and "not serving" in err, \
            f"GenerationService served without its stages (exit {code}): {err}"
        mesh.start_stub()
        code, took, err = wait_for_server(binary_dir, mesh.target, 10)
        assert code == 0, f"not serving {took:.1f} s after the stages came up (exit {code}): {err}"
        mesh.stop_stub()
        time.sleep(2)
        code, _, err = wait_for_server(binary_dir, mesh.target, 1)
        assert code == 2, f"GenerationService still served with its stages down (exit {code}): {err}"
        mesh.start_stub()
        code, took, err = wait_for_server(binary_dir, mesh.target, 10)
        assert code == 0, f"not serving again after the stages came back (exit {code}): {err}"
        print(f"health: NOT_SERVING without stages, SERVING {took:.2f} s after they came back")
    finally:
        mesh.close()


def test_stage_token(binary_dir):
    with tempfile.TemporaryDirectory() as tmp:
        token_file = os.path.join(tmp, "stage-token")
        with open(token_file, "w") as f:
            f.write("# the stage token\n" + secrets.token_hex(16) + "\n")
        wrong_file = os.path.join(tmp, "wrong-token")
        with open(wrong_file, "w") as f:
            f.write(secrets.token_hex(16) + "\n")
        stub_flags = [f"--stage-token-file={token_file}"]
        for orchestrator_flags, expect_ok in [([], False), ([f"--stage-token-file={wrong_file}"], False),
                                              ([f"--stage-token-file={token_file}"], True)]:
            mesh = Mesh(binary_dir, *orchestrator_flags, stub_flags=stub_flags)
            try:
                r = loadtest(binary_dir, mesh.target, "--count=1")
                if expect_ok:
                    assert r["ok"] == 1, f"with the token: {r['errors_by_code']} {r['first_error']}"
                else:
                    assert r["errors_by_code"].get("UNAUTHENTICATED") == 1, \
                        f"{orchestrator_flags or 'no token'}: {r['errors_by_code']} {r['first_error']}"
                    message = r["first_error"]["UNAUTHENTICATED"]
                    assert "stage token" in message, message
            finally:
                mesh.close()
    print("stage token: refused without it or with a wrong one, served with it")


def test_describe(binary_dir):
    base = procs.free_base_port((0, 1))
    stub = procs.Child([procs.binary(binary_dir, "loadtest", "diffmesh-stub-stages"),
                        "--host=127.0.0.1", f"--port={base + 1}", "--model=not-trivial"])
    try:
        procs.wait_for_port(base + 1, 30, stub.process)
        stub_addr = f"127.0.0.1:{base + 1}"
        out = subprocess.run([
            ORCHESTRATOR or procs.binary(binary_dir, "services", "orchestrator",
                                         "diffmesh-orchestrator"),
            "--host=127.0.0.1", f"--port={base}", f"--pipeline={PIPELINE}",
            f"--ar-address={stub_addr}", f"--encoder-address={stub_addr}",
            f"--denoise-address={stub_addr}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    finally:
        stub.stop()
    assert out.returncode == 2, f"exit {out.returncode}: {out.stdout} {out.stderr}"
    assert "model: the service does not serve 'trivial' (it serves: not-trivial)" in out.stderr, \
        out.stderr
    # The stub describing the pipeline's model: the orchestrator serves.
    mesh = Mesh(binary_dir)
    try:
        code, _, err = wait_for_server(binary_dir, mesh.target, 20)
        assert code == 0, f"the matching config does not serve: {err}"
        r = loadtest(binary_dir, mesh.target, "--count=1")
        assert r["ok"] == 1, f"{r['errors_by_code']} {r['first_error']}"
    finally:
        mesh.close()
    print(f"describe: a mismatched model refused at start-up ('{out.stderr.strip()}'); "
          f"the matching one serves")


def test_admission(binary_dir):
    limit = 2
    # 2 steps of 1.5 s: every admitted request holds its slot for ~3 s.
    mesh = Mesh(binary_dir, f"--max-queued-requests={limit}", step_ms=1500)
    try:
        start = time.monotonic()
        r = loadtest(binary_dir, mesh.target, "--concurrency=6", "--count=6", "--timeout=30")
        elapsed = time.monotonic() - start
        rejected = r["errors_by_code"].get("RESOURCE_EXHAUSTED", 0)
        assert r["ok"] >= limit, f"admitted requests failed: {r['errors_by_code']} {r['first_error']}"
        assert set(r["errors_by_code"]) <= {"RESOURCE_EXHAUSTED"}, r["errors_by_code"]
        assert rejected >= 6 - 2 * limit, f"only {rejected} rejected: {r}"
        message = r["first_error"]["RESOURCE_EXHAUSTED"]
        assert "retry" in message and "--max-queued-requests" in message, message
        print(f"admission: {r['ok']} ok, {rejected} RESOURCE_EXHAUSTED ('{message}') in {elapsed:.1f} s")
        # Slots are given back: once the load is gone, requests are admitted again.
        r = loadtest(binary_dir, mesh.target, "--concurrency=2", "--count=2", "--timeout=30")
        assert r["ok"] == 2, f"after the burst: {r['errors_by_code']} {r['first_error']}"
    finally:
        mesh.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary-dir", default="build")
    parser.add_argument("--orchestrator",
                        help="diffmesh-orchestrator binary (default: the one in --binary-dir)")
    parser.add_argument("tests", nargs="*", default=["health", "reconnect", "stage_token", "describe",
                                                         "admission"])
    args = parser.parse_args()
    global ORCHESTRATOR
    ORCHESTRATOR = args.orchestrator
    for name in args.tests:
        globals()[f"test_{name}"](args.binary_dir)
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
