# syntax=docker/dockerfile:1
# The CPU image of every Versus service: `versus serve vit|sd35|ranker|gateway` picks the service
# (deploy/k8s runs it as versus:0.1.0). Build from the repository root:
#   docker build -t versus:0.1.0 -f Dockerfile .
# The CUDA image for GPU nodes is Dockerfile.cuda (versus:0.1.0-cuda). Not built in this repository's CI
# (no Docker engine there); tests/test_deploy.py checks what can be checked without one.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.lock ./
# torch from PyTorch's CPU index first (PyPI's Linux wheel pulls ~3 GB of CUDA libraries), then the lock.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install -r requirements.lock
COPY protos protos
COPY pyproject.toml README.md ./
COPY services services
COPY versus_cli versus_cli
# The contracts are their own distribution (protos/); the services and tools stand on them.
RUN pip install --no-deps ./protos . && pip check \
    # open-clip-torch only for the CLIP BPE vocabulary it ships (the SD3.5 builders); not its torchvision.
    && pip install --no-deps open-clip-torch==3.3.0

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="versus" org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="Versus services (CPU): vit, sd35, ranker, gateway"
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOME=/tmp HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf \
    MPLCONFIGDIR=/tmp/matplotlib \
    MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin versus
WORKDIR /tmp
USER 10001:10001
EXPOSE 50050 50051 50052 50053 8080 9100 9101 9102 9103
ENTRYPOINT ["versus"]
CMD ["--help"]
