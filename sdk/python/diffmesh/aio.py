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
from diffmesh._types import (
    Event,
    GenerateParams,
    ModelInfo,
    Result,
    event_from_proto,
    models_from_proto,
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
    """Async iterator over the typed events of one Generate call; the last one is the Result.

    The call starts at the first ``__anext__``. ``cancel()`` ends it (the iteration then raises
    ``DiffmeshError`` with CANCELLED); leaving an ``async with`` block early cancels it too.
    """

    def __init__(self, client: "Client", request: GenerateParams, timeout: Optional[float]):
        self._client = client
        self._request = request
        self._timeout = timeout
        self._call = None
        self._iter = None
        self._cancelled = False
        self._done = False

    def __aiter__(self) -> "AsyncEventStream":
        return self

    async def __anext__(self) -> Event:
        if self._done:
            raise StopAsyncIteration
        if self._call is None:
            if self._cancelled:
                self._done = True
                raise DiffmeshError(grpc.StatusCode.CANCELLED, "cancelled before the call")
            self._call = self._client._stub_for_loop().Generate(
                self._request.to_proto(), timeout=self._timeout, metadata=self._client._metadata)
            self._iter = self._call.__aiter__()
        while True:
            try:
                message = await self._iter.__anext__()
            except StopAsyncIteration:
                self._done = True
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
            event = event_from_proto(message)
            if event is not None:
                return event

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
        result = None
        async with stream:
            async for event in stream:
                if on_event is not None:
                    on_event(event)
                if isinstance(event, Result):
                    result = event
        if result is None:
            raise DiffmeshError(grpc.StatusCode.INTERNAL, "the server ended the stream without a result")
        return result

    def stream(self, prompt, *, timeout: Optional[float] = None, **params) -> AsyncEventStream:
        """Checks the request now (TypeError / ValueError) and returns an async iterator of
        typed events; the call starts when iteration does."""
        request = GenerateParams.from_kwargs(prompt, params, "stream")
        return AsyncEventStream(self, request, self.timeout if timeout is None else timeout)

    # --- Models and health ---

    async def list_models(self, *, timeout: float = 10.0) -> List[ModelInfo]:
        stub = self._stub_for_loop()
        response = await _retry_unavailable(
            lambda t: stub.ListModels(generation_pb2.ListModelsRequest(), timeout=t,
                                      metadata=self._metadata),
            timeout)
        return models_from_proto(response)

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
