"""Synchronous client (grpcio)."""

import time
from typing import Callable, Iterator, List, Optional

import grpc

from diffmesh._channel import DEFAULT_MAX_MESSAGE_BYTES, channel_args
from diffmesh._errors import DiffmeshError
from diffmesh._retry import Backoff, NotServing
from diffmesh._proto import HEALTH_CHECK_METHOD, generation_pb2, generation_pb2_grpc, health_pb2
from diffmesh._types import (
    Event,
    GenerateParams,
    ModelInfo,
    Result,
    event_from_proto,
    models_from_proto,
)

def _retry_unavailable(call, timeout: float):
    """Runs ``call(per_attempt_timeout)`` until it does not raise UNAVAILABLE or time is up."""
    backoff = Backoff(timeout)
    while True:
        try:
            return call(backoff.attempt_timeout())
        except grpc.RpcError as e:
            pause = backoff.pause_after(e)
        time.sleep(pause)


class EventStream:
    """Progress events of one Generate call, in order; the last one is the ``Result``.

    The call starts when the stream is created. Iterating raises ``DiffmeshError`` if the call
    fails. ``cancel()`` may be called from any thread; the iteration then raises
    ``DiffmeshError`` with CANCELLED. Leaving a ``with`` block (or closing the stream) before
    the end cancels the call.
    """

    def __init__(self, call):
        self._call = call
        self._done = False

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        if self._done:
            raise StopIteration
        while True:
            try:
                message = next(self._call)
            except StopIteration:
                self._done = True
                raise
            except grpc.RpcError as e:
                self._done = True
                raise DiffmeshError.from_rpc_error(e) from None
            event = event_from_proto(message)
            if event is not None:
                return event

    def cancel(self) -> None:
        self._call.cancel()

    def close(self) -> None:
        if not self._done:
            self._call.cancel()
            self._done = True

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Client:
    """Client of a diffmesh orchestrator (``target`` is "host:port").

    token: the API token (the orchestrator's --auth-token-file), sent as
        ``authorization: Bearer <token>`` on every call.
    tls: None (plaintext), True (TLS with the system's roots), a ``diffmesh.Tls`` (CA, client
        certificate for mutual TLS) or ``grpc.ChannelCredentials``.
    timeout: deadline in seconds of each generate/stream call unless the call gives its own;
        None for no deadline.

    Thread-safe: one client serves any number of concurrent calls. Use it as a context manager
    or call ``close()``.
    """

    def __init__(self, target: str, token: Optional[str] = None, tls=None,
                 timeout: Optional[float] = 600.0, *,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        credentials, options, self._metadata = channel_args(target, token, tls, timeout,
                                                            max_message_bytes)
        self.target = target
        self.timeout = timeout
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = generation_pb2_grpc.GenerationServiceStub(self._channel)
        self._health = self._channel.unary_unary(
            HEALTH_CHECK_METHOD,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString)

    # --- Generation ---

    def generate(self, prompt, *, timeout: Optional[float] = None,
                 on_event: Optional[Callable[[Event], None]] = None, **params) -> Result:
        """Generates one image and returns the ``Result`` (``.png``, ``.save()``, ``.metadata``).

        ``prompt`` is the text (or a ``GenerateParams``); ``params`` are the fields of
        ``GenerateParams`` (height, width, steps, guidance_scale, seed, negative_prompt, model,
        request_id, include_latents). ``on_event`` sees every event as it arrives. Never retried.
        """
        request = GenerateParams.from_kwargs(prompt, params, "generate")
        result = None
        with self._start(request, timeout) as events:
            for event in events:
                if on_event is not None:
                    on_event(event)
                if isinstance(event, Result):
                    result = event
        if result is None:
            raise DiffmeshError(grpc.StatusCode.INTERNAL, "the server ended the stream without a result")
        return result

    def stream(self, prompt, *, timeout: Optional[float] = None, **params) -> EventStream:
        """Starts a generation; iterate the returned ``EventStream`` for typed events
        (Accepted, StageStarted/StageFinished, ArProgress, DenoiseProgress, then Result)."""
        return self._start(GenerateParams.from_kwargs(prompt, params, "stream"), timeout)

    def _start(self, request: GenerateParams, timeout: Optional[float]) -> EventStream:
        deadline = self.timeout if timeout is None else timeout
        call = self._stub.Generate(request.to_proto(), timeout=deadline, metadata=self._metadata)
        return EventStream(call)

    # --- Models and health ---

    def list_models(self, *, timeout: float = 10.0) -> List[ModelInfo]:
        """The served models (``.default`` marks the default); UNAVAILABLE is retried with
        backoff until ``timeout`` seconds."""
        response = _retry_unavailable(
            lambda t: self._stub.ListModels(generation_pb2.ListModelsRequest(), timeout=t,
                                            metadata=self._metadata),
            timeout)
        return models_from_proto(response)

    def wait_until_serving(self, timeout: float = 30.0, service: str = "") -> None:
        """Returns once grpc.health.v1 reports SERVING for ``service`` ("" = the server);
        raises ``DiffmeshError`` (UNAVAILABLE) when it does not within ``timeout`` seconds."""

        def check(t):
            response = self._health(health_pb2.HealthCheckRequest(service=service), timeout=t,
                                    metadata=self._metadata)
            if response.status != health_pb2.HealthCheckResponse.SERVING:
                raise NotServing(response.status)
            return response

        _retry_unavailable(check, timeout)

    # --- Lifetime ---

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_until_serving(target: str, timeout: float = 30.0, service: str = "", **client_args) -> None:
    """grpc.health.v1 check of any diffmesh service (orchestrator or stage) at ``target``."""
    with Client(target, **client_args) as client:
        client.wait_until_serving(timeout, service)
