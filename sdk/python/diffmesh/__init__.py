"""Python client of diffmesh's GenerationService.

    import diffmesh

    with diffmesh.Client("127.0.0.1:50051") as client:
        result = client.generate("a sign that says hello", steps=4, seed=7)
        result.image.save("out.png")
        print(result.metadata.seed, result.metadata.timings)

        video = client.generate("a wave breaking", model="ltx-2", images=["first.png"],
                                num_frames=121, frame_rate=24,
                                guidance={"cfg_scale": 3.0, "audio": {"cfg_scale": 7.0}})
        video.video.save("wave.mp4")

        for event in client.stream("a lighthouse", output_format="webp", quality=90):
            print(event)  # Accepted, StageStarted, Progress, StageFinished, OutputProgress,
                          # ..., then the Result

A ``Result`` has ``.outputs`` (each an ``Output``: its ``OutputInfo`` fields, ``.data``,
``.save(path)``, ``.to_numpy()`` for "raw" / "latents" tensors), ``.image`` / ``.video`` /
``.audio`` (the first output of that kind) and ``.metadata`` (the request as accepted with every
default filled in, the seed, per-stage timings). Outputs arrive as chunks on the wire; the
client assembles them (checking they are contiguous and whole) and reports each chunk as an
``OutputProgress`` event.

``diffmesh.aio.Client`` is the asyncio twin (grpc.aio). Server errors are raised as
``diffmesh.DiffmeshError`` (``.code`` is a ``grpc.StatusCode``, ``.message`` the server's text);
requests the client can tell are wrong raise ``TypeError`` / ``ValueError`` naming the field
before any call.

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
    Event,
    FrameRule,
    GenerateParams,
    Guidance,
    InputMedia,
    MediaRole,
    Metadata,
    ModelInfo,
    ModelKind,
    ModelLimits,
    Output,
    OutputFormat,
    OutputInfo,
    OutputKind,
    OutputProgress,
    Progress,
    Request,
    Result,
    StageFinished,
    StageStarted,
    StreamGuidance,
    Tensor,
)
from diffmesh._channel import Tls  # noqa: E402
from diffmesh.client import Client, EventStream, wait_until_serving  # noqa: E402

__version__ = "0.2.0"

__all__ = [
    "Accepted",
    "Client",
    "DiffmeshError",
    "Event",
    "EventStream",
    "FrameRule",
    "GenerateParams",
    "Guidance",
    "InputMedia",
    "MediaRole",
    "Metadata",
    "ModelInfo",
    "ModelKind",
    "ModelLimits",
    "Output",
    "OutputFormat",
    "OutputInfo",
    "OutputKind",
    "OutputProgress",
    "Progress",
    "Request",
    "Result",
    "StageFinished",
    "StageStarted",
    "StreamGuidance",
    "Tensor",
    "Tls",
    "wait_until_serving",
]
