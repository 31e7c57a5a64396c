# syntax=docker/dockerfile:1
# The Banking Ledger API image: gunicorn serving wsgi:app on 0.0.0.0:$PORT (3000) as a non-root user.
#   docker build -t banking-ledger .
#   docker compose up            (the API, a 3-member MongoDB replica set and mailpit; see docker-compose.yml)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: turn the project and every dependency into wheels (no compiler: the compiled ones ship binary wheels)
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY ledger ./ledger
RUN python -m pip wheel --wheel-dir /wheels .

# ---- runtime: the wheels installed offline, the three top-level modules, nothing else
FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    APP_ENV=production \
    PORT=3000
RUN groupadd --system --gid 10001 ledger \
 && useradd --system --uid 10001 --gid ledger --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin ledger
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links=/wheels /wheels/*.whl
WORKDIR /app
# config.py and wsgi.py are top-level modules (not part of the ledger package); gunicorn.conf.py is read by -c.
COPY config.py wsgi.py gunicorn.conf.py ./
USER ledger:ledger
EXPOSE 3000
# Liveness only (/health); orchestrators should route traffic on /ready, which also checks the database.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '3000'), timeout=4)"]
# gunicorn.conf.py binds 0.0.0.0:$PORT, picks workers/threads from the environment and logs access lines to stdout.
CMD ["gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"]
