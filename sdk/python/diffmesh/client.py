"""Synchronous client (grpcio)."""

import threading
import time
from typing import Callable, Iterator, List, Optional

import grpc

from diffmesh._channel import DEFAULT_MAX_MESSAGE_BYTES, channel_args
from diffmesh._errors import DiffmeshError
from diffmesh._retry import Backoff, NotServing
from diffmesh._proto import HEALTH_CHECK_METHOD, generation_pb2, generation_pb2_grpc, health_pb2
from diffmesh._types import Event, GenerateParams, MediaRole, ModelInfo, Result
from diffmesh._wire import (
    ROLE_LOOKUP_SECONDS,
    StreamAssembler,
    describes,
    image_role_for,
    models_from_proto,
    request_to_proto,
    set_image_role,
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
    """The typed events of one Generate call, in order: Accepted, then StageStarted / Progress /
    StageFinished per stage, OutputProgress per output chunk received, and last the ``Result``
    with every output's bytes assembled from its chunks.

    The call starts when the stream is created. Iterating raises ``DiffmeshError`` if the call
    fails, or if the stream ends without a result or with outputs that do not add up (DATA_LOSS).
    ``cancel()`` may be called from any thread; the iteration then raises ``DiffmeshError`` with
    CANCELLED. Leaving a ``with`` block (or closing the stream) before the end cancels the call.
    """

    def __init__(self, call):
        self._call = call
        self._assembler = StreamAssembler()
        self._done = False

    @property
    def result(self) -> Optional[Result]:
        """The Result once it has arrived, else None."""
        return self._assembler.result

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
                self._assembler.finish()  # raises when no result came
                raise
            except grpc.RpcError as e:
                self._done = True
                raise DiffmeshError.from_rpc_error(e) from None
            try:
                event = self._assembler.feed(message)
            except DiffmeshError:
                self.close()
                raise
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
    max_message_bytes: the largest message sent or received (a request carries its input
        images whole; outputs arrive in chunks of at most 1 MiB).

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
        self._max_message_bytes = max_message_bytes
        self._models: Optional[List[ModelInfo]] = None  # for the role of ``images``
        self._models_lock = threading.Lock()
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
        """Runs one generation and returns its ``Result``: ``.outputs`` (each with its info,
        ``.data``, ``.save(path)``, ``.to_numpy()`` for tensors), ``.image`` / ``.video``,
        ``.save(path)`` (the first output) and ``.metadata`` (the request as accepted, timings).

        ``prompt`` is the text (or a ``GenerateParams``); ``params`` are the fields of
        ``GenerateParams``: model, negative_prompt, images=[...] or inputs=[(role, image)],
        height, width, num_frames, frame_rate, steps, seed, guidance (``Guidance`` or dict),
        output_format ("png", "jpeg", "webp", "mp4", "raw", "latents"), quality, request_id.
        An image is PNG/JPEG/WebP bytes, a path or a PIL image. ``images`` take the role the
        model's description gives them (``ModelInfo.image_role``: the first frame for a video
        model, the image to edit for an image model), looked up once per client with ListModels.

        ``on_event`` sees every event as it arrives. Bad arguments raise ``TypeError`` /
        ``ValueError`` naming the field before any call. Never retried.
        """
        request = GenerateParams.from_kwargs(prompt, params, "generate")
        with self._start(request, timeout) as events:
            for event in events:
                if on_event is not None:
                    on_event(event)
            return events.result

    def stream(self, prompt, *, timeout: Optional[float] = None, **params) -> EventStream:
        """Starts a generation (arguments as for ``generate``); iterate the returned
        ``EventStream`` for typed events: Accepted, StageStarted / Progress / StageFinished,
        OutputProgress (one per output chunk; the bytes stay in the client), then the Result."""
        return self._start(GenerateParams.from_kwargs(prompt, params, "stream"), timeout)

    def _start(self, request: GenerateParams, timeout: Optional[float]) -> EventStream:
        deadline = self.timeout if timeout is None else timeout
        proto = request_to_proto(request, self._max_message_bytes)
        if request.images:
            set_image_role(proto, request, self._image_role(request.model, deadline))
        call = self._stub.Generate(proto, timeout=deadline, metadata=self._metadata)
        return EventStream(call)

    def _image_role(self, model: str, deadline: Optional[float]) -> MediaRole:
        """The role of ``images`` for ``model``, from the (cached) model descriptions."""
        lookup = ROLE_LOOKUP_SECONDS if deadline is None else min(deadline, ROLE_LOOKUP_SECONDS)
        with self._models_lock:
            if not describes(self._models, model):
                self._models = self.list_models(timeout=lookup)
            models = self._models
        return image_role_for(models, model)

    # --- Models and health ---

    def list_models(self, *, timeout: float = 10.0) -> List[ModelInfo]:
        """The served models (``.default`` marks the default): kind, input roles, stages,
        limits, defaults and output formats. UNAVAILABLE is retried with backoff until
        ``timeout`` seconds."""
        response = _retry_unavailable(
            lambda t: self._stub.ListModels(generation_pb2.ListModelsRequest(), timeout=t,
                                            metadata=self._metadata),
            timeout)
        self._models = models_from_proto(response)  # also for the role of ``images``
        return list(self._models)

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
