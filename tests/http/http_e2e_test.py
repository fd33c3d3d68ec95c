#!/usr/bin/env python3
"""diffmesh-http end to end: orchestrator + diffmesh-stub-stages + diffmesh-http on loopback,
checked with raw HTTP (limits, errors, health, metrics, disconnects, deadlines, HTTPS + mTLS),
the official `openai` npm client (openai_client_test.mjs) and headless Chromium on the
playground (playground_test.mjs, screenshot in --out-dir).

    python3 tests/http/http_e2e_test.py --binary-dir build --out-dir build/tests/http
"""

import argparse
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "loadtest"))
import procs  # noqa: E402

TOKEN = "test-token-123"
MAX_JOBS = 4
STEP_MS = 30        # the stub's sleep per denoise event
SLOW_STEPS = 200    # 200 steps * 30 ms = 6 s: long enough to cancel or time out (max 200)
MODEL = "trivial"   # loadtest/trivial_pipeline.json


def request(port, method, path, body=None, headers=None, token=TOKEN, timeout=30, tls=None):
    conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=tls)
            if tls else http.client.HTTPConnection("127.0.0.1", port, timeout=timeout))
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
        h.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=body, headers=h)
    res = conn.getresponse()
    data = res.read()
    conn.close()
    return res.status, res.getheader("Content-Type") or "", data


def expect_error(result, status, param=None, code=None):
    got, ctype, data = result
    assert got == status, f"status {got} != {status}: {data[:300]!r}"
    assert ctype.startswith("application/json"), ctype
    err = json.loads(data)["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def in_flight(port):
    _, _, data = request(port, "GET", "/metrics", token=None)
    for line in data.decode().splitlines():
        if line.startswith("diffmesh_http_generations_in_flight"):
            return float(line.split()[-1])
    raise AssertionError("no diffmesh_http_generations_in_flight in /metrics")


def wait_idle(port, within):
    end = time.monotonic() + within
    while time.monotonic() < end:
        if in_flight(port) == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"generations still in flight after {within} s")


def raw_checks(port, dead_port):
    # Health, models, auth.
    status, _, data = request(port, "GET", "/health", token=None)
    assert status == 200 and json.loads(data)["status"] == "SERVING", data
    expect_error(request(port, "GET", "/v1/models", token=None), 401, code="invalid_api_key")
    expect_error(request(port, "GET", "/v1/models", token="nope"), 401)
    status, _, data = request(port, "GET", "/v1/models")
    assert status == 200 and json.loads(data)["data"][0]["id"] == MODEL, data
    status, ctype, page = request(port, "GET", "/", token=None)
    assert status == 200 and ctype.startswith("text/html") and b"diffmesh playground" in page

    # Limits and routing: 413, 431, 404, 400 naming the field.
    expect_error(request(port, "POST", "/v1/images/generations",
                         body=json.dumps({"prompt": "x" * (2 << 20)}),
                         headers={"Content-Type": "application/json"}), 413,
                 code="request_too_large")
    # Header sections over --max-header-bytes (16 KiB): 431; one line over cpp-httplib's own
    # 8 KiB line limit: 400.
    expect_error(request(port, "GET", "/v1/models",
                         headers={f"X-Big-{i}": "y" * (7 << 10) for i in range(3)}), 431)
    expect_error(request(port, "GET", "/v1/models", headers={"X-Big": "y" * (9 << 10)}), 400)
    expect_error(request(port, "GET", "/v1/nothing"), 404)
    expect_error(request(port, "POST", "/v1/images/generations", body="{not json",
                         headers={"Content-Type": "application/json"}), 400, param="body")
    expect_error(request(port, "POST", "/v1/images/generations",
                         body={"prompt": "x", "size": "12"}), 400, param="size")
    expect_error(request(port, "POST", "/v1/images/generations",
                         body={"prompt": "x", "size": "64x64", "steps": 100000}), 400,
                 param="steps")
    expect_error(request(port, "POST", "/v1/images/edits", body={"prompt": "x"}), 400,
                 param="image")
    expect_error(request(port, "GET", "/v1/videos/video_unknown"), 404, param="video_id")

    # A good request, plain JSON.
    status, _, data = request(port, "POST", "/v1/images/generations",
                              body={"model": MODEL, "prompt": "x", "size": "64x32", "seed": 3})
    assert status == 200, data
    body = json.loads(data)
    assert body["size"] == "64x32" and body["data"][0]["diffmesh"]["seed"] == 3, body

    # 504: a generation past --request-timeout-s.
    t0 = time.monotonic()
    expect_error(request(port, "POST", "/v1/images/generations",
                         body={"prompt": "x", "size": "64x64", "steps": SLOW_STEPS}), 504,
                 code="deadline_exceeded")
    assert time.monotonic() - t0 < 5, "the deadline did not cut the generation short"
    wait_idle(port, 3)

    # A client that disconnects cancels its generation (plain and streamed).
    for stream in (False, True):
        s = socket.create_connection(("127.0.0.1", port))
        body = json.dumps({"prompt": "x", "size": "64x64", "steps": SLOW_STEPS, "stream": stream})
        s.sendall((f"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n"
                   f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
        end = time.monotonic() + 3
        while in_flight(port) < 1:
            assert time.monotonic() < end, "the generation did not start"
            time.sleep(0.02)
        time.sleep(0.3)
        s.close()
        t0 = time.monotonic()
        wait_idle(port, 2)  # far less than the 6 s the generation would take
        print(f"ok   disconnect (stream={stream}) cancelled in {time.monotonic() - t0:.2f} s")

    # /metrics: Prometheus text with the routes seen.
    status, ctype, data = request(port, "GET", "/metrics", token=None)
    text = data.decode()
    assert status == 200 and ctype.startswith("text/plain"), ctype
    assert 'diffmesh_http_requests_total{code="413"' in text, text[:2000]
    assert 'route="POST /v1/images/generations"' in text
    assert "diffmesh_http_request_seconds_bucket" in text

    # A front door whose orchestrator is down: /health 503, generations 503 UNAVAILABLE.
    status, _, data = request(dead_port, "GET", "/health", token=None)
    assert status == 503, (status, data)
    expect_error(request(dead_port, "POST", "/v1/images/generations", body={"prompt": "x"}), 503,
                 code="unavailable")
    print("ok   raw HTTP checks (auth, 413, 431, 404, 400, 504, 503, disconnects, metrics)")


def stop_checks(http_bin, orch_port):
    """SIGTERM while a generation runs: it is cancelled and the process exits promptly."""
    port = procs.free_base_port((0,))
    door = procs.Child([http_bin, f"--port={port}", f"--orchestrator=127.0.0.1:{orch_port}"])
    procs.wait_for_port(port, 30, door.process)
    s = socket.create_connection(("127.0.0.1", port))
    body = json.dumps({"prompt": "x", "size": "64x64", "steps": SLOW_STEPS})
    s.sendall((f"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
               f"{body}").encode())
    end = time.monotonic() + 3
    while in_flight(port) < 1:
        assert time.monotonic() < end, "the generation did not start"
        time.sleep(0.02)
    t0 = time.monotonic()
    door.process.terminate()
    door.process.wait(timeout=5)
    took = time.monotonic() - t0
    s.close()
    assert door.process.returncode == 0, door.log()
    assert took < 2, f"SIGTERM took {took:.1f} s with a generation running"
    door.stop()
    print(f"ok   SIGTERM with a generation running: exited in {took:.2f} s")


def connection_limit_checks(http_bin, orch_port):
    """--max-connections 1: a second connection waits until the first one's request is done."""
    port = procs.free_base_port((0,))
    door = procs.Child([http_bin, f"--port={port}", f"--orchestrator=127.0.0.1:{orch_port}",
                        "--max-connections=1", "--keep-alive-s=1"])
    try:
        procs.wait_for_port(port, 30, door.process)
        steps = 50  # 50 * STEP_MS = 1.5 s
        s = socket.create_connection(("127.0.0.1", port))
        body = json.dumps({"prompt": "x", "size": "64x64", "steps": steps})
        t0 = time.monotonic()
        s.sendall((f"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                   f"{body}").encode())
        time.sleep(0.2)
        status, _, _ = request(port, "GET", "/v1/models", token=None)
        waited = time.monotonic() - t0
        first = b""
        while chunk := s.recv(65536):
            first += chunk
        s.close()
        assert first.startswith(b"HTTP/1.1 200"), first[:100]
        assert status == 200
        assert waited >= steps * STEP_MS / 1000 * 0.8, f"served after {waited:.2f} s: no limit"
        print(f"ok   --max-connections 1: the second connection was served after {waited:.2f} s")
    finally:
        door.stop()


def orchestrator_token_checks(http_bin, orch_bin, stub_addr, tokens):
    """An orchestrator with --auth-token-file: the door passes --orchestrator-token-file's token;
    without it the orchestrator's UNAUTHENTICATED comes back as 401."""
    port = procs.free_base_port((0, 1, 2))
    orch = procs.Child([orch_bin, "--host=127.0.0.1", f"--port={port}",
                        f"--pipeline={os.path.join(ROOT, 'loadtest', 'trivial_pipeline.json')}",
                        f"--ar-address={stub_addr}", f"--encoder-address={stub_addr}",
                        f"--denoise-address={stub_addr}", f"--auth-token-file={tokens}"])
    client_token = tokens + ".client"
    with open(client_token, "w") as f:
        f.write(TOKEN + "\n")
    with_token = procs.Child([http_bin, f"--port={port + 1}", f"--orchestrator=127.0.0.1:{port}",
                              f"--orchestrator-token-file={client_token}"])
    without = procs.Child([http_bin, f"--port={port + 2}", f"--orchestrator=127.0.0.1:{port}"])
    try:
        for p, c in ((port, orch), (port + 1, with_token), (port + 2, without)):
            procs.wait_for_port(p, 30, c.process)
        status, _, data = request(port + 1, "POST", "/v1/images/generations", token=None,
                                  body={"prompt": "x", "size": "64x64"})
        assert status == 200, data
        expect_error(request(port + 2, "POST", "/v1/images/generations", token=None,
                             body={"prompt": "x", "size": "64x64"}), 401)
        print("ok   a secured orchestrator: its token from --orchestrator-token-file, else 401")
    finally:
        for c in (without, with_token, orch):
            c.stop()


def tls_checks(http_bin, orch_port, certs):
    port = procs.free_base_port((0,))
    door = procs.Child([http_bin, f"--port={port}", f"--orchestrator=127.0.0.1:{orch_port}",
                        f"--tls-cert={certs}/server.pem", f"--tls-key={certs}/server.key",
                        f"--tls-client-ca={certs}/ca.pem"])
    try:
        procs.wait_for_port(port, 30, door.process)
        ctx = ssl.create_default_context(cafile=f"{certs}/ca.pem")
        ctx.load_cert_chain(f"{certs}/client.pem", f"{certs}/client.key")
        status, _, data = request(port, "POST", "/v1/images/generations", token=None, tls=ctx,
                                  body={"prompt": "x", "size": "64x64"})
        assert status == 200 and json.loads(data)["size"] == "64x64", data
        # No client certificate: the handshake fails.
        bare = ssl.create_default_context(cafile=f"{certs}/ca.pem")
        try:
            request(port, "GET", "/health", token=None, tls=bare)
            raise AssertionError("a client without a certificate was served")
        except (ssl.SSLError, ConnectionError, http.client.HTTPException, OSError):
            pass
        print("ok   HTTPS with mutual TLS")
    finally:
        door.stop()


def node_modules():
    if not os.path.isdir(os.path.join(HERE, "node_modules", "openai")):
        # scripts/install-deps.sh installs them; a fresh checkout gets them here.
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary-dir", default="build")
    parser.add_argument("--out-dir", default=None, help="screenshot and logs go here")
    parser.add_argument("--certs", default=os.environ.get("DIFFMESH_TEST_CERTS", ""))
    parser.add_argument("--suites", default="raw,openai,browser",
                        help="which checks: raw (HTTP + HTTPS), openai (the npm client), "
                             "browser (Chromium on the playground)")
    parser.add_argument("--orchestrator", default="",
                        help="use this running orchestrator (e.g. `diffmesh up`) instead of "
                             "starting one over the stub stages; browser suite only")
    parser.add_argument("--model", default=MODEL, help="the model the browser suite picks")
    args = parser.parse_args()
    suites = set(args.suites.split(","))
    if args.orchestrator and suites != {"browser"}:
        parser.error("--orchestrator goes with --suites browser (the other suites expect the stubs)")
    out_dir = args.out_dir or os.path.join(args.binary_dir, "tests", "http")
    os.makedirs(out_dir, exist_ok=True)

    stub_bin = procs.binary(args.binary_dir, "loadtest", "diffmesh-stub-stages")
    orch_bin = procs.binary(args.binary_dir, "services", "orchestrator", "diffmesh-orchestrator")
    http_bin = procs.binary(args.binary_dir, "services", "http", "diffmesh-http")
    if suites & {"openai", "browser"}:
        node_modules()

    base = procs.free_base_port((0, 1, 2, 3, 4))
    tmp = tempfile.mkdtemp(prefix="diffmesh_http_")
    tokens = os.path.join(tmp, "tokens")
    with open(tokens, "w") as f:
        f.write(f"# test tokens\n{TOKEN}\n")
    children = []
    try:
        orch_addr = args.orchestrator or f"127.0.0.1:{base}"
        if not args.orchestrator:
            stub = procs.Child([stub_bin, f"--port={base + 1}", f"--denoise-step-ms={STEP_MS}"])
            children.append(stub)
            procs.wait_for_port(base + 1, 30, stub.process)
            stub_addr = f"127.0.0.1:{base + 1}"
            orch = procs.Child([orch_bin, "--host=127.0.0.1", f"--port={base}",
                                f"--pipeline={os.path.join(ROOT, 'loadtest', 'trivial_pipeline.json')}",
                                f"--ar-address={stub_addr}", f"--encoder-address={stub_addr}",
                                f"--denoise-address={stub_addr}"])
            children.append(orch)
            procs.wait_for_port(base, 30, orch.process)
        door = procs.Child([http_bin, f"--port={base + 2}", f"--orchestrator={orch_addr}",
                            f"--auth-token-file={tokens}", "--max-body-bytes=1048576",
                            f"--max-video-jobs={MAX_JOBS}", "--request-timeout-s=2"])
        children.append(door)
        # Nothing listens on base + 4: this one's orchestrator is down.
        dead = procs.Child([http_bin, f"--port={base + 3}", f"--orchestrator=127.0.0.1:{base + 4}"])
        children.append(dead)
        procs.wait_for_port(base + 2, 30, door.process)
        procs.wait_for_port(base + 3, 30, dead.process)

        if "raw" in suites:
            raw_checks(base + 2, base + 3)
            stop_checks(http_bin, base)
            connection_limit_checks(http_bin, base)
            orchestrator_token_checks(http_bin, orch_bin, stub_addr, tokens)
            if args.certs and os.path.exists(os.path.join(args.certs, "server.pem")):
                tls_checks(http_bin, base, args.certs)
            else:
                print("skip HTTPS: no --certs / DIFFMESH_TEST_CERTS")

        env = dict(os.environ, DIFFMESH_HTTP_URL=f"http://127.0.0.1:{base + 2}",
                   DIFFMESH_HTTP_KEY=TOKEN, DIFFMESH_MODEL=args.model,
                   DIFFMESH_SLOW_STEPS=str(SLOW_STEPS), DIFFMESH_MAX_JOBS=str(MAX_JOBS),
                   DIFFMESH_SCREENSHOT=os.path.join(out_dir, "playground.png"))
        if "openai" in suites:
            subprocess.run(["node", os.path.join(HERE, "openai_client_test.mjs")], env=env,
                           check=True, timeout=300)
        if "browser" in suites:
            subprocess.run(["node", os.path.join(HERE, "playground_test.mjs")], env=env,
                           check=True, timeout=120)
            print(f"screenshot: {env['DIFFMESH_SCREENSHOT']}")
    except BaseException:
        for c in children:
            print(f"--- {c.process.args[0]} log ---\n{c.log()[-3000:]}", file=sys.stderr)
        raise
    finally:
        for c in reversed(children):
            c.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
