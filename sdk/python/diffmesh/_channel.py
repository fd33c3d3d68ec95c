"""Channel set-up shared by the sync and asyncio clients: TLS, the bearer token, limits."""

import dataclasses
import os
from typing import List, Optional, Tuple, Union

import grpc

# Matches the servers' limit: a result carries a whole PNG (and optionally latents).
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20

_Pem = Union[bytes, str, os.PathLike, None]


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    """TLS for the channel. PEM values are bytes, or a path to read them from.

    root_certificates: CA bundle to trust (None: the system's roots).
    private_key / certificate_chain: a client certificate for mutual TLS.
    server_name_override: the name to check the server's certificate against (tests).
    """

    root_certificates: _Pem = None
    private_key: _Pem = None
    certificate_chain: _Pem = None
    server_name_override: Optional[str] = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.root_certificates),
            private_key=_read_pem(self.private_key),
            certificate_chain=_read_pem(self.certificate_chain),
        )


def _read_pem(value: _Pem) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()


def channel_args(target: str, token: Optional[str], tls, timeout, max_message_bytes: int):
    """Validates the client's settings; returns (credentials or None, options, metadata)."""
    if not isinstance(target, str) or not target:
        raise TypeError("target: expected a non-empty 'host:port' string")
    if token is not None and (not isinstance(token, str) or not token):
        raise TypeError("token: expected a non-empty string or None")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError("timeout: expected seconds (a number) or None")
        if timeout <= 0:
            raise ValueError("timeout: must be > 0 seconds (None: no deadline)")
    if tls is None or tls is False:
        credentials = None
    elif tls is True:
        credentials = grpc.ssl_channel_credentials()
    elif isinstance(tls, TlsConfig):
        credentials = tls.credentials()
    elif isinstance(tls, grpc.ChannelCredentials):
        credentials = tls
    else:
        raise TypeError("tls: expected None, True, diffmesh.TlsConfig or grpc.ChannelCredentials")
    options: List[Tuple[str, object]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if isinstance(tls, TlsConfig) and tls.server_name_override:
        options.append(("grpc.ssl_target_name_override", tls.server_name_override))
    # The token travels as per-call metadata: it works over TLS and, for a local mesh or a
    # TLS-terminating proxy, over plaintext too.
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return credentials, options, metadata
