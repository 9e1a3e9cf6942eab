# syntax=docker/dockerfile:1-labs
# The streetcascade miner image: an engine set compiled for one GPU type (or for the CPU) in a
# build stage, packed with the online side and the miner config into the one-file artifact
# (`streetcascade package`), installed into a slim runtime stage that runs as a non-root user.
# Build and run per GPU type: docs/deploy.md.
#
#   CPU:  docker build --build-arg VARIANT=cpu -t streetcascade-miner:cpu .
#   GPU:  docker buildx build --builder gpubuilder --allow device \
#             --build-arg VARIANT=gpu --build-arg GPU_TYPE=sm89 -t streetcascade-miner:sm89 .
#   GPU, engines compiled beforehand on the GPU box (no GPU needed in the build):
#         docker build --build-arg VARIANT=gpu --build-arg ENGINES_FROM=prebuilt \
#             --build-context engines=engines/sm89-rtx4090 -t streetcascade-miner:sm89 .
#
# Every RUN that runs project code is `make setup` (what CI runs) or a deploy/docker/*.sh script
# that tests/ship/test_deploy_scripts.py runs; the only other RUN installs `make` from Debian.
# No secret enters the image: the hotkey is mounted at run time (see docs/deploy.md).

# Pinned bases: the runtime's Python must be the toolchain's (the artifact's wheels are cp312).
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm
# TensorRT 10.8.0.43, CUDA 12.8, Python 3.12, Ubuntu 24.04.
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:25.01-py3
ARG VARIANT=cpu
ARG ENGINES_FROM=compiled

# ---- toolchains: the checkout installed with its offline extras (torch, transformers, onnx) ----
FROM ${PYTHON_IMAGE} AS cpu-toolchain
RUN apt-get update \
    && apt-get install -y --no-install-recommends make=4.3-4.1 \
    && rm -rf /var/lib/apt/lists/*
# PyTorch's CPU wheels (PyPI's are the CUDA build, gigabytes of it).
ENV PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . .
ARG EXTRAS=cpu,compile,miner,ocr,openvino,ship,chain
RUN make setup VENV=/opt/build EXTRAS=${EXTRAS}
ENV PATH=/opt/build/bin:$PATH

FROM ${TENSORRT_IMAGE} AS gpu-toolchain
ENV PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . .
# The image's own TensorRT through --system-site-packages; onnxruntime (cpu) for the parity
# check of every GPU engine against ONNX Runtime on the CPU.
ARG GPU_EXTRAS=cpu,compile,miner,ocr,ship,chain,gpu
RUN make setup VENV=/opt/build VENV_FLAGS=--system-site-packages EXTRAS=${GPU_EXTRAS}
# The artifact's wheels, TensorRT's included (same version as this image's), from the indexes.
ENV PATH=/opt/build/bin:$PATH \
    DEFAULT_PACKAGE_ARGS="--resolve index --index-url https://pypi.org/simple --index-url https://pypi.nvidia.com"

# ---- engines: compiled here (the GPU stage needs the GPU in the build), or brought along ----
FROM cpu-toolchain AS cpu-engines-compiled
ARG CASCADE_CONFIG=configs/default.toml
ARG CPU_TARGET=
RUN CASCADE_CONFIG=${CASCADE_CONFIG} GPU_TYPE=cpu TARGET=${CPU_TARGET} OUT=/build/engines deploy/docker/build-engines.sh

FROM gpu-toolchain AS gpu-engines-compiled
ARG CASCADE_CONFIG=configs/gpu.toml
ARG GPU_TYPE=sm89
ARG GPU_TARGET=auto
# BuildKit's CDI device (dockerfile:1-labs, BuildKit >= 0.20): the GPU inside this one step.
# hadolint ignore=SC2215
RUN --device=nvidia.com/gpu CASCADE_CONFIG=${CASCADE_CONFIG} GPU_TYPE=${GPU_TYPE} TARGET=${GPU_TARGET} OUT=/build/engines \
    deploy/docker/build-engines.sh

# Engines compiled outside the build: `--build-context engines=engines/sm89-rtx4090` replaces
# this empty stage (a named context overrides the stage of the same name).
FROM scratch AS engines

FROM cpu-toolchain AS cpu-engines-prebuilt
COPY --from=engines / /build/engines

FROM gpu-toolchain AS gpu-engines-prebuilt
COPY --from=engines / /build/engines

# ---- the one-file artifact: online side + engine set + miner config, hashed ----
FROM ${VARIANT}-engines-${ENGINES_FROM} AS package
ARG MINER_CONFIG=deploy/docker/miner.toml
# Flags for `streetcascade package` (default: this venv's distributions on the CPU variant,
# the indexes on the GPU variant, see DEFAULT_PACKAGE_ARGS above).
ARG PACKAGE_ARGS=
RUN ENGINES=/build/engines MINER_CONFIG=${MINER_CONFIG} OUT=/build/miner.pex PACKAGE_ARGS="${PACKAGE_ARGS}" deploy/docker/package.sh

# ---- runtime: Python, the artifact installed as a venv, nothing else ----
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="streetcascade miner" \
      org.opencontainers.image.description="NATIX StreetVision (Bittensor subnet 72) miner: compiled cascade, bittensor 9.x axon" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN --mount=type=bind,source=deploy/docker/runtime-setup.sh,target=/tmp/runtime-setup.sh \
    sh /tmp/runtime-setup.sh
RUN --mount=type=bind,from=package,source=/build/miner.pex,target=/tmp/miner.pex \
    --mount=type=bind,source=deploy/docker/install-artifact.sh,target=/tmp/install-artifact.sh \
    sh /tmp/install-artifact.sh /tmp/miner.pex /opt/streetcascade
ENV STREETCASCADE_STATE_DIR=/var/lib/streetcascade \
    STREETCASCADE_WALLET_PATH=/home/miner/.bittensor/wallets \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/streetcascade"]
WORKDIR /var/lib/streetcascade
USER 10001:10001
# The axon (deploy/docker/miner.toml [[hotkeys]] port) and /metrics + /health (metrics_port).
EXPOSE 8091 9100
# Loading the engine set and the first metagraph read take a while: 3 minutes before failures count.
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 CMD ["/opt/streetcascade/pex", "health"]
# SIGTERM: in-flight requests finish (up to graceful_shutdown_s, 15 s): stop with -t 30.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/streetcascade/pex"]
CMD ["serve"]
