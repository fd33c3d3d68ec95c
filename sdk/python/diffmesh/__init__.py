"""Python client of diffmesh's GenerationService.

    import diffmesh

    with diffmesh.Client("127.0.0.1:50051") as client:
        result = client.generate("a sign that says hello", steps=4, seed=7)
        result.save("out.png")
        print(result.metadata.seed, result.metadata.timings)

``diffmesh.aio.Client`` is the asyncio twin (grpc.aio). Server errors are raised as
``diffmesh.DiffmeshError`` (``.code`` is a ``grpc.StatusCode``, ``.message`` the server's text);
requests the client can tell are wrong raise ``TypeError`` / ``ValueError`` before any call.

The generated protobuf modules (``diffmesh.v1.generation_pb2`` and friends) are written into
the build tree by the ``diffmesh_python`` CMake target; put both ``sdk/python`` and
``<build>/sdk/python`` on ``PYTHONPATH``.
"""

# The package spans two folders: these sources and the generated modules in the build tree
# (<build>/sdk/python/diffmesh/v1/...). extend_path adds every diffmesh/ folder on sys.path.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)  # noqa: F821 (set by the import system)

from diffmesh._errors import DiffmeshError  # noqa: E402
from diffmesh._types import (  # noqa: E402
    Accepted,
    ArProgress,
    DenoiseProgress,
    Event,
    GenerateParams,
    Metadata,
    ModelInfo,
    Result,
    StageFinished,
    StageStarted,
    Tensor,
)
from diffmesh._channel import Tls  # noqa: E402
from diffmesh.client import Client, EventStream, wait_until_serving  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Accepted",
    "ArProgress",
    "Client",
    "DenoiseProgress",
    "DiffmeshError",
    "Event",
    "EventStream",
    "GenerateParams",
    "Metadata",
    "ModelInfo",
    "Result",
    "StageFinished",
    "StageStarted",
    "Tensor",
    "Tls",
    "wait_until_serving",
]
