"""Starts `diffmesh up` on free loopback ports for end-to-end tests and stops it afterwards."""

import os
import random
import signal
import socket
import subprocess
import tempfile

import diffmesh


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port() -> int:
    """A base port P with P..P+3 (the four services), P+9 (the denoise group) and P+10..P+13
    (their /metrics) free."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 50000)
        if all(_port_free(base + i) for i in (0, 1, 2, 3, 9, 10, 11, 12, 13)):
            return base
    raise RuntimeError("no free loopback ports")


def binary_dir() -> str:
    d = os.environ.get("DIFFMESH_BINARY_DIR")
    if not d:
        raise RuntimeError("DIFFMESH_BINARY_DIR is not set (run through ctest)")
    return d


class Mesh:
    """`diffmesh up --base-port P [up_args...]` as a child process; `target` is the orchestrator.

    client_args (e.g. ``tls=diffmesh.Tls(...)``) are what the health checks of the start need.
    """

    def __init__(self, start_timeout: float = 180.0, up_args=(), client_args=None):
        self.base_port = free_base_port()
        self.target = f"127.0.0.1:{self.base_port}"
        self._log = tempfile.NamedTemporaryFile(prefix="diffmesh_up_", suffix=".log", delete=False)
        cli = os.path.join(binary_dir(), "services", "cli", "diffmesh")
        self._process = subprocess.Popen([cli, "up", f"--base-port={self.base_port}", *up_args],
                                         stdout=self._log, stderr=subprocess.STDOUT)
        try:
            for i in range(4):
                diffmesh.wait_until_serving(f"127.0.0.1:{self.base_port + i}", timeout=start_timeout,
                                            **(client_args or {}))
        except Exception:
            self.stop()
            raise RuntimeError(f"the mesh did not come up:\n{self.log()}") from None

    def log(self) -> str:
        with open(self._log.name, "r", errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        """Stops the mesh; if it had died on its own, prints its log (the cause of failures)."""
        if self._process.poll() is not None:
            print(f"diffmesh up exited early with {self._process.returncode}:\n{self.log()}")
        else:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()
        os.unlink(self._log.name)
