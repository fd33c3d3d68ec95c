"""Child processes and free loopback ports for the load tester's scripts (stdlib only)."""

import os
import random
import signal
import socket
import subprocess
import tempfile
import time


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# What `diffmesh up --base-port P` listens on: the four services on P..P+3, the denoise group's
# rendezvous on P+9, their /metrics on P+10..P+13.
MESH_PORT_OFFSETS = (0, 1, 2, 3, 9, 10, 11, 12, 13)


def free_base_port(offsets=MESH_PORT_OFFSETS) -> int:
    """A base port P with P + each offset free, below the kernel's ephemeral range (32768+),
    where outgoing connections take their ports."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(20000, 32000 - max(offsets))
        if all(port_free(base + i) for i in offsets):
            return base
    raise RuntimeError("no free loopback ports")


def wait_for_port(port: int, timeout: float, process=None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} while starting")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Child:
    """A background process with its output in a temporary log; stop() sends SIGTERM."""

    def __init__(self, argv):
        self.log_file = tempfile.NamedTemporaryFile(prefix="diffmesh_", suffix=".log", delete=False)
        self.process = subprocess.Popen(argv, stdout=self.log_file, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        with open(self.log_file.name, "r", errors="replace") as f:
            return f.read()

    def wait_for_output(self, text: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.log():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"'{text}' did not appear:\n{self.log()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time so far (Linux /proc), this process only."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()
        os.unlink(self.log_file.name)


def binary(binary_dir: str, *parts: str) -> str:
    path = os.path.join(binary_dir, *parts)
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{path} is missing: build it first")
    return path


def system_cpu_seconds():
    """(busy, total) CPU seconds of the whole machine so far, summed over its CPUs (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])       # without guest time, which is inside user already
    return (total - idle) / ticks, total / ticks
