"""The retry schedule shared by the sync and asyncio clients: ListModels and health checks are
retried while the server answers UNAVAILABLE (e.g. still starting); Generate never is."""

import time

import grpc

from diffmesh._errors import DiffmeshError

_BACKOFF_START = 0.02
_BACKOFF_MAX = 0.5
_ATTEMPT_MAX = 5.0  # seconds one attempt may take


class Backoff:
    """Attempts until ``timeout`` seconds from now, with doubling pauses in between."""

    def __init__(self, timeout: float):
        self._end = time.monotonic() + timeout
        self._delay = _BACKOFF_START

    def attempt_timeout(self) -> float:
        """The deadline of the next attempt, in seconds."""
        return max(0.001, min(self._end - time.monotonic(), _ATTEMPT_MAX))

    def pause_after(self, error: grpc.RpcError) -> float:
        """The pause before retrying after ``error``; raises ``DiffmeshError`` when ``error`` is
        final (not UNAVAILABLE, or no time left)."""
        code = error.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() < self._end:
            code = grpc.StatusCode.UNAVAILABLE  # one slow attempt while starting up
        if code != grpc.StatusCode.UNAVAILABLE or time.monotonic() + self._delay >= self._end:
            raise DiffmeshError.from_rpc_error(error) from None
        delay = self._delay
        self._delay = min(self._delay * 2, _BACKOFF_MAX)
        return delay


class NotServing(grpc.RpcError):
    """A health answer other than SERVING, retried like UNAVAILABLE."""

    def __init__(self, status):
        super().__init__()
        self._status = status

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return f"not serving (health status {self._status})"
