"""The Python SDK, the CLI and the load tester against a mesh with mutual TLS and an API token.

`diffmesh up` with the throw-away certificates of scripts/make-test-certs.sh (CTest fixture
`test_certs`, found through DIFFMESH_TEST_CERTS). Also: the Python SDK, the C++ SDK (through
`diffmesh generate --server`) and the embedded CLI give the same PNG bytes for the same request.
"""

import asyncio
import hashlib
import json
import os
import subprocess
import tempfile
import unittest
import urllib.request

import grpc

import diffmesh
import diffmesh.aio
from _mesh import Mesh, binary_dir

TOKEN = "py-mesh-token-42"
REQUEST = dict(height=64, width=64, steps=2, seed=9)
PROMPT = 'a sign that says "same bytes"'

mesh = None
certs = None
tmp = None


def cert(name: str) -> str:
    return os.path.join(certs, name)


def mtls(**overrides) -> diffmesh.Tls:
    """The mesh's CA and the client certificate it accepts, unless overridden."""
    args = dict(root_certs=cert("ca.pem"), client_cert=cert("client.pem"),
                client_key=cert("client.key"))
    args.update(overrides)
    return diffmesh.Tls(**args)


def setUpModule():
    global mesh, certs, tmp
    certs = os.environ.get("DIFFMESH_TEST_CERTS")
    if not certs:
        raise RuntimeError("DIFFMESH_TEST_CERTS is not set (run through ctest: fixture test_certs)")
    tmp = tempfile.TemporaryDirectory(prefix="diffmesh_secure_")
    with open(os.path.join(tmp.name, "tokens"), "w") as f:
        f.write(f"# accepted tokens\n{TOKEN}\nanother-token\n")
    with open(os.path.join(tmp.name, "client_token"), "w") as f:
        f.write(f"{TOKEN}\n")
    mesh = Mesh(up_args=["--tls-cert", cert("server.pem"), "--tls-key", cert("server.key"),
                         "--tls-ca", cert("ca.pem"), "--tls-client-ca", cert("ca.pem"),
                         "--stage-tls-cert", cert("client.pem"),
                         "--stage-tls-key", cert("client.key"),
                         "--auth-token-file", os.path.join(tmp.name, "tokens")],
                client_args=dict(tls=mtls()))


def tearDownModule():
    if mesh is not None:
        mesh.stop()
    if tmp is not None:
        tmp.cleanup()


def requests_total() -> float:
    """Sum of the orchestrator's diffmesh_requests_total: requests that reached the pipeline."""
    url = f"http://127.0.0.1:{mesh.base_port + 10}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("diffmesh_requests_total{"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(args):
    """Runs a binary; stdout and stderr apart (gRPC may log to stderr)."""
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)


def output(result) -> str:
    return (result.stdout + result.stderr).decode(errors="replace")


class SecureSyncClientTest(unittest.TestCase):
    def test_generate_with_token_and_client_certificate(self):
        with diffmesh.Client(mesh.target, token=TOKEN, tls=mtls(), timeout=120) as client:
            result = client.generate(PROMPT, **REQUEST)
            self.assertTrue(result.image.data.startswith(b"\x89PNG"))
            self.assertEqual(result.image.size_bytes, len(result.image.data))
            self.assertEqual(result.metadata.seed, 9)
            self.assertTrue(any(m.default for m in client.list_models()))

    def test_pem_bytes_work_like_paths(self):
        with open(cert("ca.pem"), "rb") as f:
            ca = f.read()
        with diffmesh.Client(mesh.target, token=TOKEN, tls=mtls(root_certs=ca)) as client:
            self.assertTrue(client.list_models())

    def test_missing_or_wrong_token_is_unauthenticated_and_starts_nothing(self):
        before = requests_total()
        for token in (None, "wrong-token", TOKEN[:-1]):
            with self.subTest(token=token), diffmesh.Client(mesh.target, token=token,
                                                            tls=mtls()) as client:
                events = []
                with self.assertRaises(diffmesh.DiffmeshError) as cm:
                    for event in client.stream(PROMPT, **REQUEST):
                        events.append(event)
                self.assertEqual(cm.exception.code, grpc.StatusCode.UNAUTHENTICATED)
                self.assertEqual(events, [])
                if token:
                    self.assertNotIn(token, cm.exception.message)
                with self.assertRaises(diffmesh.DiffmeshError) as cm:
                    client.list_models()
                self.assertEqual(cm.exception.code, grpc.StatusCode.UNAUTHENTICATED)
                client.wait_until_serving(timeout=10)  # health needs no token
        self.assertEqual(requests_total(), before, "a rejected call reached the pipeline")
        self.assertNotIn(TOKEN, mesh.log(), "the token was logged")

    def test_clients_without_the_right_certificate_are_refused(self):
        before = requests_total()
        cases = {
            "no client certificate": dict(tls=diffmesh.Tls(root_certs=cert("ca.pem"))),
            "another CA's certificate": dict(tls=mtls(client_cert=cert("other-client.pem"),
                                                      client_key=cert("other-client.key"))),
            "plaintext": dict(tls=None),
        }
        for name, args in cases.items():
            with self.subTest(name), diffmesh.Client(mesh.target, token=TOKEN, **args) as client:
                with self.assertRaises(diffmesh.DiffmeshError) as cm:
                    client.generate(PROMPT, **REQUEST)
                self.assertEqual(cm.exception.code, grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(requests_total(), before, "a refused call reached the pipeline")


class SecureAioClientTest(unittest.TestCase):
    def test_aio_with_token_and_tls(self):
        async def main():
            async with diffmesh.aio.Client(mesh.target, token=TOKEN, tls=mtls()) as client:
                result = await client.generate(PROMPT, **REQUEST)
                self.assertTrue(result.image.data.startswith(b"\x89PNG"))
            async with diffmesh.aio.Client(mesh.target, tls=mtls()) as client:
                with self.assertRaises(diffmesh.DiffmeshError) as cm:
                    await client.generate(PROMPT, **REQUEST)
                self.assertEqual(cm.exception.code, grpc.StatusCode.UNAUTHENTICATED)
            async with diffmesh.aio.Client(mesh.target, token=TOKEN,
                                           tls=diffmesh.Tls(root_certs=cert("ca.pem"))) as client:
                with self.assertRaises(diffmesh.DiffmeshError) as cm:
                    await client.generate(PROMPT, **REQUEST)
                self.assertEqual(cm.exception.code, grpc.StatusCode.UNAVAILABLE)

        asyncio.run(main())


class SameBytesEverywhereTest(unittest.TestCase):
    """One request and seed: the Python SDK, the C++ SDK (the CLI with --server, over mutual TLS
    with the token) and the embedded CLI (every stage in-process) give byte-identical PNGs."""

    def test_python_sdk_cpp_sdk_and_embedded_cli_agree(self):
        with diffmesh.Client(mesh.target, token=TOKEN, tls=mtls(), timeout=120) as client:
            python_png = client.generate(PROMPT, **REQUEST).image.data
        cli = os.path.join(binary_dir(), "services", "cli", "diffmesh")
        shape = ["--prompt", PROMPT, "--seed", "9", "--height", "64", "--width", "64",
                 "--steps", "2"]
        server_png = os.path.join(tmp.name, "server.png")
        out = run([cli, "generate", "--server", mesh.target, "--tls-ca", cert("ca.pem"),
                   "--tls-cert", cert("client.pem"), "--tls-key", cert("client.key"),
                   "--token-file", os.path.join(tmp.name, "client_token"), *shape,
                   "--output", server_png])
        self.assertEqual(out.returncode, 0, output(out))
        embedded_png = os.path.join(tmp.name, "embedded.png")
        out = run([cli, "generate", *shape, "--output", embedded_png])
        self.assertEqual(out.returncode, 0, output(out))
        with open(server_png, "rb") as f:
            cpp = f.read()
        with open(embedded_png, "rb") as f:
            embedded = f.read()
        self.assertEqual(sha256(cpp), sha256(python_png), "C++ SDK (CLI --server) vs Python SDK")
        self.assertEqual(sha256(embedded), sha256(python_png), "embedded CLI vs Python SDK")


class LoadtestFlagsTest(unittest.TestCase):
    def test_loadtest_speaks_tls_and_sends_the_token(self):
        loadtest = os.path.join(binary_dir(), "loadtest", "diffmesh-loadtest")
        common = [loadtest, "--target", mesh.target, "--tls-ca", cert("ca.pem"),
                  "--tls-cert", cert("client.pem"), "--tls-key", cert("client.key"),
                  "--count", "2", "--height", "64", "--width", "64", "--steps", "2", "--json"]
        out = run([*common, "--token-file", os.path.join(tmp.name, "client_token")])
        self.assertEqual(out.returncode, 0, output(out))
        self.assertEqual(json.loads(out.stdout)["ok"], 2)
        self.assertNotIn(TOKEN, output(out))
        out = run(common)
        self.assertEqual(out.returncode, 1, output(out))
        report = json.loads(out.stdout)
        self.assertEqual(report["errors_by_code"], {"UNAUTHENTICATED": 2}, report)


if __name__ == "__main__":
    unittest.main()
