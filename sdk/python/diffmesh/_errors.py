"""The one exception type for errors the server (or the transport) reports."""

import grpc


class DiffmeshError(Exception):
    """A failed call: ``code`` is the gRPC status code, ``message`` the server's text.

    INVALID_ARGUMENT / NOT_FOUND messages start with the offending field ("height: ...");
    UNAVAILABLE names the stage or address that could not be reached.
    """

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "DiffmeshError":
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "")
