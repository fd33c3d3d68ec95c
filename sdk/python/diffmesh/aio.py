"""asyncio client (grpc.aio) with the surface of ``diffmesh.Client``.

    async with diffmesh.aio.Client("127.0.0.1:50051") as client:
        result = await client.generate("a lighthouse", steps=4)
        async for event in client.stream("a lighthouse", steps=4):
            print(event)
"""

import asyncio
from typing import Callable, List, Optional

import grpc
import grpc.aio

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


async def _retry_unavailable(call, timeout: float):
    """Awaits ``call(per_attempt_timeout)`` until it does not raise UNAVAILABLE or time is up."""
    backoff = Backoff(timeout)
    while True:
        try:
            return await call(backoff.attempt_timeout())
        except grpc.RpcError as e:
            pause = backoff.pause_after(e)
        await asyncio.sleep(pause)


class AsyncEventStream:
    """Async iterator over the typed events of one Generate call, as ``diffmesh.EventStream``:
    Accepted, StageStarted / Progress / StageFinished, OutputProgress per output chunk, and
    last the Result with every output's bytes assembled.

    The call starts at the first ``__anext__`` (after the role lookup that ``images`` need).
    ``cancel()`` ends it (the iteration then raises ``DiffmeshError`` with CANCELLED); leaving
    an ``async with`` block early cancels it too.
    """

    def __init__(self, client: "Client", request: GenerateParams, timeout: Optional[float]):
        self._client = client
        self._request = request
        # Built now: a request too large for the channel fails in stream(), before any call.
        self._proto = request_to_proto(request, client._max_message_bytes)
        self._timeout = timeout
        self._assembler = StreamAssembler()
        self._call = None
        self._iter = None
        self._cancelled = False
        self._done = False

    @property
    def result(self) -> Optional[Result]:
        """The Result once it has arrived, else None."""
        return self._assembler.result

    def __aiter__(self) -> "AsyncEventStream":
        return self

    async def __anext__(self) -> Event:
        if self._done:
            raise StopAsyncIteration
        if self._call is None:
            await self._start()
        while True:
            try:
                message = await self._iter.__anext__()
            except StopAsyncIteration:
                self._done = True
                self._assembler.finish()  # raises when no result came
                raise
            except asyncio.CancelledError:
                # grpc.aio reports a cancelled call as asyncio.CancelledError; ours is an error
                # of the call, not of the awaiting task, unless the task itself was cancelled.
                self._done = True
                if self._cancelled:
                    raise DiffmeshError(grpc.StatusCode.CANCELLED, "cancelled by the client") from None
                raise
            except grpc.RpcError as e:
                self._done = True
                raise DiffmeshError.from_rpc_error(e) from None
            try:
                event = self._assembler.feed(message)
            except DiffmeshError:
                await self.aclose()
                raise
            if event is not None:
                return event

    async def _start(self) -> None:
        try:
            if self._request.images:
                role = await self._client._image_role(self._request.model, self._timeout)
                set_image_role(self._proto, self._request, role)
            if self._cancelled:
                raise DiffmeshError(grpc.StatusCode.CANCELLED, "cancelled before the call")
        except BaseException:
            self._done = True
            raise
        self._call = self._client._stub_for_loop().Generate(
            self._proto, timeout=self._timeout, metadata=self._client._metadata)
        self._iter = self._call.__aiter__()

    def cancel(self) -> None:
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()

    async def aclose(self) -> None:
        if not self._done:
            self.cancel()
            self._done = True

    async def __aenter__(self) -> "AsyncEventStream":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


class Client:
    """asyncio client of a diffmesh orchestrator; arguments as for ``diffmesh.Client``.

    The channel is created on first use, inside the running event loop, so the client may be
    constructed anywhere; use it from one event loop. Close with ``await client.close()`` or
    ``async with``.
    """

    def __init__(self, target: str, token: Optional[str] = None, tls=None,
                 timeout: Optional[float] = 600.0, *,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self._credentials, self._options, self._metadata = channel_args(
            target, token, tls, timeout, max_message_bytes)
        self.target = target
        self.timeout = timeout
        self._max_message_bytes = max_message_bytes
        self._models: Optional[List[ModelInfo]] = None  # for the role of ``images``
        self._models_lock: Optional[asyncio.Lock] = None
        self._channel = None
        self._stub = None
        self._health = None

    def _stub_for_loop(self):
        if self._channel is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
            else:
                self._channel = grpc.aio.secure_channel(self.target, self._credentials,
                                                        options=self._options)
            self._stub = generation_pb2_grpc.GenerationServiceStub(self._channel)
            self._health = self._channel.unary_unary(
                HEALTH_CHECK_METHOD,
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString)
        return self._stub

    # --- Generation ---

    async def generate(self, prompt, *, timeout: Optional[float] = None,
                       on_event: Optional[Callable[[Event], None]] = None, **params) -> Result:
        """As ``diffmesh.Client.generate``; ``on_event`` is a plain function called per event."""
        stream = self.stream(prompt, timeout=timeout, **params)
        async with stream:
            async for event in stream:
                if on_event is not None:
                    on_event(event)
        return stream.result

    def stream(self, prompt, *, timeout: Optional[float] = None, **params) -> AsyncEventStream:
        """Checks the request now (TypeError / ValueError naming the field) and returns an async
        iterator of typed events; the call starts when iteration does."""
        request = GenerateParams.from_kwargs(prompt, params, "stream")
        return AsyncEventStream(self, request, self.timeout if timeout is None else timeout)

    async def _image_role(self, model: str, deadline: Optional[float]) -> MediaRole:
        """The role of ``images`` for ``model``, from the (cached) model descriptions."""
        lookup = ROLE_LOOKUP_SECONDS if deadline is None else min(deadline, ROLE_LOOKUP_SECONDS)
        if self._models_lock is None:
            self._models_lock = asyncio.Lock()
        async with self._models_lock:
            if not describes(self._models, model):
                self._models = await self.list_models(timeout=lookup)
            models = self._models
        return image_role_for(models, model)

    # --- Models and health ---

    async def list_models(self, *, timeout: float = 10.0) -> List[ModelInfo]:
        """As ``diffmesh.Client.list_models``."""
        stub = self._stub_for_loop()
        response = await _retry_unavailable(
            lambda t: stub.ListModels(generation_pb2.ListModelsRequest(), timeout=t,
                                      metadata=self._metadata),
            timeout)
        self._models = models_from_proto(response)  # also for the role of ``images``
        return list(self._models)

    async def wait_until_serving(self, timeout: float = 30.0, service: str = "") -> None:
        self._stub_for_loop()

        async def check(t):
            response = await self._health(health_pb2.HealthCheckRequest(service=service),
                                          timeout=t, metadata=self._metadata)
            if response.status != health_pb2.HealthCheckResponse.SERVING:
                raise NotServing(response.status)
            return response

        await _retry_unavailable(check, timeout)

    # --- Lifetime ---

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


__all__ = ["AsyncEventStream", "Client"]
