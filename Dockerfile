# syntax=docker/dockerfile:1
# The CPU image of every Versus service: `versus serve vit|sd35|ranker|gateway` picks the service
# (deploy/k8s runs it as versus:0.1.0). `make image` builds it here with podman, on a Debian rootfs it makes
# itself (no registry needed):
#   make image
# With a registry, build the wheelhouse on the host, then the image on a Python base of your choice:
#   make wheelhouse && docker build -t versus:0.1.0 -f Dockerfile .
# The build needs no network: the hashed lock's wheels (locks/image.txt) come from .wheelhouse/cpu and our two
# from .wheelhouse/local, both made on the host by `make wheelhouse` (scripts/wheels.py).
# The CUDA image for GPU nodes is Dockerfile.cuda (versus:0.1.0-cuda), not built in CI.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY locks/image.txt /src/locks/image.txt
COPY .wheelhouse/cpu /wheelhouse
# Only hashed pins (every transitive one; torch is 2.13.0+cpu), offline; then the contracts and the services,
# --no-deps, in their own layer (they change with every source edit, the lock's layer does not).
RUN pip install --no-index --find-links /wheelhouse --require-hashes -r /src/locks/image.txt
COPY .wheelhouse/local /local
RUN pip install --no-index --no-deps /local/versus_contracts-0.1.0-py3-none-any.whl \
       /local/versus-0.1.0-py3-none-any.whl \
    && pip check \
    && pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="versus" org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="Versus services (CPU): vit, sd35, ranker, gateway"
COPY --from=build /opt/venv /opt/venv
# HF_HUB_OFFLINE=1 is a default: hub ids resolve from the cache only, unless --allow-download overrides it.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOME=/tmp HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf \
    MPLCONFIGDIR=/tmp/matplotlib \
    MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin versus
WORKDIR /tmp
USER 10001:10001
EXPOSE 50050 50051 50052 50053 8080 9100 9101 9102 9103
ENTRYPOINT ["versus"]
CMD ["--help"]
