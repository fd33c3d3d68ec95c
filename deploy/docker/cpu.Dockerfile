# syntax=docker/dockerfile:1
# The diffmesh CPU image (Debian 12): the four services and the `diffmesh` CLI, built with the
# packages CI uses (scripts/install-deps.sh). From the repository root:
#   docker build -f deploy/docker/cpu.Dockerfile -t diffmesh:0.1.0 .
# The chart (helm/diffmesh, `image`) runs it as user 10001 on a read-only root filesystem.
ARG DEBIAN=debian:bookworm

FROM ${DEBIAN} AS build
WORKDIR /src
# The package layer first: it is reused until the package list changes.
COPY scripts/install-deps.sh scripts/
RUN scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
 && cmake --build /build -j"$(nproc)" \
      --target diffmesh-orchestrator diffmesh-ar diffmesh-encoder diffmesh-denoise diffmesh \
 && mkdir /out \
 && cp /build/services/orchestrator/diffmesh-orchestrator /build/services/ar/diffmesh-ar \
       /build/services/encoder/diffmesh-encoder /build/services/denoise/diffmesh-denoise \
       /build/services/cli/diffmesh /out/ \
 && deploy/docker/runtime-packages.sh /out/diffmesh* > /out/runtime-packages.txt

FROM ${DEBIAN}-slim
# Exactly the packages of the libraries the binaries link (runtime-packages.sh).
COPY --from=build /out/runtime-packages.txt /tmp/
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(cat /tmp/runtime-packages.txt) \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && groupadd -g 10001 diffmesh && useradd -u 10001 -g 10001 -M -d /tmp -s /usr/sbin/nologin diffmesh
COPY --from=build /out/diffmesh /out/diffmesh-orchestrator /out/diffmesh-ar /out/diffmesh-encoder \
                  /out/diffmesh-denoise /usr/local/bin/
USER 10001:10001
# gRPC 50051..50054 (orchestrator, ar, encoder, denoise), /metrics 50061..50064, rendezvous 29500.
EXPOSE 50051 50052 50053 50054 50061 50062 50063 50064 29500
ENTRYPOINT ["/usr/local/bin/diffmesh"]
