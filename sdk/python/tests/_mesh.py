"""Starts `diffmesh up` on free loopback ports for end-to-end tests and stops it afterwards."""

import os
import sys

import diffmesh

# The project's process and port helpers (loadtest/procs.py, standard library only).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                "loadtest"))
import procs  # noqa: E402


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
        self.base_port = procs.free_base_port()
        self.target = f"127.0.0.1:{self.base_port}"
        cli = os.path.join(binary_dir(), "services", "cli", "diffmesh")
        self._child = procs.Child([cli, "up", f"--base-port={self.base_port}", *up_args])
        try:
            for i in range(4):
                diffmesh.wait_until_serving(f"127.0.0.1:{self.base_port + i}", timeout=start_timeout,
                                            **(client_args or {}))
        except Exception:
            log = self.log()  # before stop(), which removes it
            self.stop()
            raise RuntimeError(f"the mesh did not come up:\n{log}") from None

    def log(self) -> str:
        return self._child.log()

    def stop(self) -> None:
        """Stops the mesh; if it had died on its own, prints its log (the cause of failures)."""
        process = self._child.process
        if process.poll() is not None:
            print(f"diffmesh up exited early with {process.returncode}:\n{self.log()}")
        self._child.stop()
