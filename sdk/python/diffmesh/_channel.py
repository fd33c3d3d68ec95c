"""Channel set-up shared by the sync and asyncio clients: TLS, the bearer token, limits."""

import dataclasses
import os
from typing import List, Optional, Tuple, Union

import grpc

# Matches the servers' limit. A request carries its input images whole; outputs arrive in
# chunks of at most 1 MiB.
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20

_Pem = Union[bytes, str, os.PathLike, None]


@dataclasses.dataclass(frozen=True)
class Tls:
    """TLS for the channel (the orchestrator's --tls-cert / --tls-client-ca).

    Each PEM value is bytes (or a str that starts with "-----BEGIN"), or a path to read it from;
    files are read when the client is created.

    root_certs: CAs the server's certificate must chain to (None: the system's roots).
    client_cert / client_key: a client certificate and its key, for a server that requires one
        (mutual TLS); both or neither.
    target_name_override: the name to check the server's certificate against instead of the
        target's host.
    """

    root_certs: _Pem = None
    client_cert: _Pem = None
    client_key: _Pem = None
    target_name_override: Optional[str] = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("tls: client_cert and client_key go together")
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.root_certs, "root_certs"),
            private_key=_read_pem(self.client_key, "client_key"),
            certificate_chain=_read_pem(self.client_cert, "client_cert"),
        )


def _read_pem(value: _Pem, name: str) -> Optional[bytes]:
    if value is None:
        return None
    if isinstance(value, bytes):
        pem = value
    elif isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        pem = value.encode("ascii")
    elif isinstance(value, (str, os.PathLike)):
        with open(value, "rb") as f:  # OSError names the file
            pem = f.read()
    else:
        raise TypeError(f"tls.{name}: expected PEM bytes or a path")
    if b"-----BEGIN " not in pem:
        where = "" if isinstance(value, bytes) else f" ({value})"
        raise ValueError(f"tls.{name}: not PEM{where}")
    return pem


def channel_args(target: str, token: Optional[str], tls, timeout, max_message_bytes: int):
    """Validates the client's settings; returns (credentials or None, options, metadata)."""
    if not isinstance(target, str) or not target:
        raise TypeError("target: expected a non-empty 'host:port' string")
    if token is not None and (not isinstance(token, str) or not token):
        raise TypeError("token: expected a non-empty string or None")
    if token is not None and not all("!" <= c <= "~" for c in token):
        # gRPC would fail every call on an illegal header value.
        raise ValueError("token: visible ASCII without spaces")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError("timeout: expected seconds (a number) or None")
        if timeout <= 0:
            raise ValueError("timeout: must be > 0 seconds (None: no deadline)")
    if tls is None or tls is False:
        credentials = None
    elif tls is True:
        credentials = grpc.ssl_channel_credentials()
    elif isinstance(tls, Tls):
        credentials = tls.credentials()
    elif isinstance(tls, grpc.ChannelCredentials):
        credentials = tls
    else:
        raise TypeError("tls: expected None, True, diffmesh.Tls or grpc.ChannelCredentials")
    options: List[Tuple[str, object]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if isinstance(tls, Tls) and tls.target_name_override:
        options.append(("grpc.ssl_target_name_override", tls.target_name_override))
    # The token travels as per-call metadata: it works over TLS and, for a local mesh or a
    # TLS-terminating proxy, over plaintext too.
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return credentials, options, metadata
