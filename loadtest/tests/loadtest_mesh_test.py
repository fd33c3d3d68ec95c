#!/usr/bin/env python3
"""diffmesh-loadtest against a real mesh (`diffmesh up` on free loopback ports, glm-image-tiny):
closed and open loop for a few tiny requests, then a bad request. Checks the JSON report."""

import argparse
import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import procs  # noqa: E402

ARGS = None
PIPELINE_STAGES = ("ar", "encoder", "denoise")  # glm-image-tiny's stages, in config order
# Timings the server adds to the pipeline's (GenerationService's StageTiming).
SERVER_TIMINGS = {"transfer", "vae_decode", "orchestrator"}
mesh = None
target = None


def loadtest(*flags):
    argv = [procs.binary(ARGS.binary_dir, "loadtest", "diffmesh-loadtest"), f"--target={target}",
            "--height=64", "--width=64", "--steps=2", "--timeout=120", *flags]
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)


def setUpModule():
    global mesh, target
    base = procs.free_base_port()
    target = f"127.0.0.1:{base}"
    mesh = procs.Child([procs.binary(ARGS.binary_dir, "services", "cli", "diffmesh"), "up",
                        f"--base-port={base}"])
    mesh.wait_for_output("mesh is up", timeout=180)


def tearDownModule():
    if mesh is not None:
        mesh.stop()


class LoadtestMeshTest(unittest.TestCase):
    def check_clean(self, report, count):
        self.assertEqual(report["count"], count, report)
        self.assertEqual(report["ok"], count, report)
        self.assertEqual(report["errors"], 0, report)
        self.assertEqual(report["errors_by_code"], {})
        self.assertGreater(report["throughput_rps"], 0)
        lat = report["latency_seconds"]
        # glm-image-tiny's stages, plus only timings the server adds of its own.
        stages = set(lat["stages"])
        self.assertLessEqual(set(PIPELINE_STAGES), stages)
        self.assertLessEqual(stages, set(PIPELINE_STAGES) | SERVER_TIMINGS)
        for name, s in [("end_to_end", lat["end_to_end"]), ("server_total", lat["server_total"]),
                        ("orchestrator", lat["orchestrator"]), *lat["stages"].items()]:
            self.assertEqual(s["count"], count, name)
            self.assertLessEqual(s["min"], s["p50"], name)
            self.assertLessEqual(s["p50"], s["p90"], name)
            self.assertLessEqual(s["p90"], s["p99"], name)
            self.assertLessEqual(s["p99"], s["max"], name)
        # The client sees at least what the server measured.
        self.assertGreaterEqual(lat["end_to_end"]["min"], lat["server_total"]["min"])

    def test_closed_loop(self):
        out = loadtest("--json", "--count=4", "--warmup=1", "--concurrency=2", "--seed=3")
        self.assertEqual(out.returncode, 0, out.stderr)
        report = json.loads(out.stdout)
        self.assertEqual(report["mode"], "closed")
        self.assertEqual(report["warmup"], 1)
        self.assertLessEqual(report["max_in_flight"], 2)
        self.assertEqual(report["request"]["steps"], 2)
        self.check_clean(report, 4)

    def test_open_loop(self):
        out = loadtest("--json", "--count=4", "--rate=8")
        self.assertEqual(out.returncode, 0, out.stderr)
        report = json.loads(out.stdout)
        self.assertEqual(report["mode"], "open")
        self.assertGreater(report["offered_rps"], 0)
        self.check_clean(report, 4)

    def test_bad_request_counts_errors_by_code(self):
        out = loadtest("--json", "--count=2", "--height=100")
        self.assertEqual(out.returncode, 1, out.stderr)
        report = json.loads(out.stdout)
        self.assertEqual(report["errors"], 2)
        self.assertEqual(report["errors_by_code"], {"INVALID_ARGUMENT": 2})
        self.assertTrue(report["first_error"]["INVALID_ARGUMENT"].startswith("height:"))

    def test_table_output(self):
        out = loadtest("--count=2")
        self.assertEqual(out.returncode, 0, out.stderr)
        for text in ("throughput", "end-to-end", "orchestrator", "errors by code"):
            self.assertIn(text, out.stdout)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary-dir", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0], "-v", *rest])
