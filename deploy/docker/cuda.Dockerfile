# syntax=docker/dockerfile:1
# The diffmesh CUDA image: the services with --device cuda (the AR service in bf16 with CUDA-graph
# decode, denoise ranks over NCCL). Built as scripts/gpu-build.sh builds on a GPU host: PyTorch's
# own LibTorch (from its wheel: torch.utils.cmake_prefix_path), the CUDA toolkit and NCCL of the
# base image, and gRPC / protobuf / Abseil / prometheus-cpp from the distribution through
# scripts/install-deps.sh (Ubuntu 24.04 carries the Debian 12 package names). From the root:
#   docker build -f deploy/docker/cuda.Dockerfile -t diffmesh-cuda:0.1.0 .
# The chart (helm/diffmesh, `cudaImage`) runs it as user 10001 on a read-only root filesystem.
# TORCH_INDEX must match the base image's CUDA; the wheel must use the C++11 ABI (torch >= 2.7),
# as the distribution's gRPC does.
ARG CUDA_DEVEL=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
ARG CUDA_RUNTIME=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_DEVEL} AS build
ARG TORCH_VERSION=2.8.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG CUDA_ARCHITECTURES=90
WORKDIR /src
COPY scripts/install-deps.sh scripts/
RUN scripts/install-deps.sh \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv ninja-build \
 && rm -rf /var/lib/apt/lists/*
# LibTorch (and the CUDA libraries it loads) from PyTorch's wheel, in a prefix the runtime copies.
RUN python3 -m venv /opt/torch \
 && /opt/torch/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
      -DDIFFMESH_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}" \
      -DCMAKE_PREFIX_PATH="$(/opt/torch/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
 && cmake --build /build \
      --target diffmesh-orchestrator diffmesh-ar diffmesh-encoder diffmesh-denoise diffmesh \
 && mkdir /out \
 && cp /build/services/orchestrator/diffmesh-orchestrator /build/services/ar/diffmesh-ar \
       /build/services/encoder/diffmesh-encoder /build/services/denoise/diffmesh-denoise \
       /build/services/cli/diffmesh /out/ \
 && deploy/docker/runtime-packages.sh /out/diffmesh* > /out/runtime-packages.txt

FROM ${CUDA_RUNTIME}
COPY --from=build /out/runtime-packages.txt /tmp/
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(cat /tmp/runtime-packages.txt) \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && groupadd -g 10001 diffmesh && useradd -u 10001 -g 10001 -M -d /tmp -s /usr/sbin/nologin diffmesh
# PyTorch's libraries at the path the binaries' RPATH names (torch/lib, and the nvidia/* wheels
# that torch/lib's own RPATH reaches).
COPY --from=build /opt/torch/lib /opt/torch/lib
COPY --from=build /out/diffmesh /out/diffmesh-orchestrator /out/diffmesh-ar /out/diffmesh-encoder \
                  /out/diffmesh-denoise /usr/local/bin/
USER 10001:10001
EXPOSE 50051 50052 50053 50054 50061 50062 50063 50064 29500
ENTRYPOINT ["/usr/local/bin/diffmesh"]
