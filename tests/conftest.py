"""Test fixtures: a private Redis for the session (never the one on 6379), and real servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from server.economy import Catalog, load_catalog
from server.embedded import EmbeddedRedis
from server.services import Services
from server.settings import Settings
from tests import frame_contract
from tests.live_server import TEST_SECRET, LiveServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def settings(redis_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        token_secret=TEST_SECRET,
        payout_delay_ms=300,
        sweep_min_age_ms=1000,
    )


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="session")
async def services(settings: Settings) -> AsyncIterator[Services]:
    svc = Services.build(settings)
    yield svc
    await svc.close()


@pytest.fixture(scope="session")
def live_server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(redis_url, log_dir=tmp_path_factory.mktemp("logs")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def server_url(live_server: LiveServer) -> str:
    return live_server.url


@pytest.fixture
async def http(server_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server_url, timeout=10) as client:
        yield client


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture(autouse=True)
def frames_match_the_asyncapi_document() -> Iterator[None]:
    """Every frame a test's RoomClients read matches docs/asyncapi.yaml (issue 13.2)."""
    yield
    frame_contract.verify_seen()
