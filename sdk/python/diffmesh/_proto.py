"""The generated protobuf and gRPC modules, with a clear error when they were not built."""

try:
    from diffmesh.v1 import generation_pb2, generation_pb2_grpc, tensor_pb2  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "diffmesh: the generated modules (diffmesh.v1.generation_pb2, ...) were not found. "
        "Build them with `cmake --build <build> --target diffmesh_python` and put "
        "<build>/sdk/python on PYTHONPATH next to sdk/python."
    ) from e

# grpc.health.v1: prefer grpcio-health-checking's module when installed (one registration of
# health.proto per process), else the copy generated beside this package.
try:
    from grpc_health.v1 import health_pb2  # noqa: F401
except ImportError:
    from diffmesh import _health_pb2 as health_pb2  # noqa: F401

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
