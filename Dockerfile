# One image for every Versus service: `versus serve vit|...` picks the service (see deploy/k8s).
# Not built in this repository's CI (no Docker engine there). Pass the torch wheel index that fits your
# nodes (CPU or CUDA) with --build-arg PIP_EXTRA_INDEX_URL=...
FROM python:3.11-slim
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf \
    MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install -r requirements.lock
COPY services services
COPY versus versus
RUN pip install --no-deps . && useradd --uid 10001 --no-create-home versus
USER 10001
ENTRYPOINT ["versus"]
