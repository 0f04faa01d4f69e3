"""Configuration: defaults that run on a laptop, clear refusals for what cannot run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from server.settings import Settings, SettingsError


def test_defaults_run_on_a_laptop() -> None:
    s = Settings.from_env({})
    assert s.redis_url is None and s.port == 8000 and s.wallet_buckets == 1024
    assert s.diamonds_per_coin == 1 and s.cashout_min_diamonds == 2000
    assert len(s.token_secret) >= 32


def test_environment_overrides() -> None:
    s = Settings.from_env(
        {
            "REDIS_URL": "redis://h:1/0",
            "WALLET_BUCKETS": "16",
            "DIAMONDS_PER_COIN": "2",
            "GS_CASHOUT_MIN_DIAMONDS": "100",
            "REDIS_CLUSTER_URLS": "redis://a:1,redis://b:2",
        }
    )
    assert s.redis_url == "redis://h:1/0" and s.wallet_buckets == 16 and s.diamonds_per_coin == 2
    assert s.cashout_min_diamonds == 100 and s.redis_cluster_urls == ("redis://a:1", "redis://b:2")


@pytest.mark.parametrize(
    "env",
    [
        {"GS_PORT": "eighty"},
        {"WALLET_BUCKETS": "0"},
        {"GS_WORKERS": "-1"},
        {"GS_SWEEP_INTERVAL_S": "x"},
    ],
)
def test_malformed_values_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(env)


def test_production_needs_a_secret() -> None:
    with pytest.raises(SettingsError, match="GS_TOKEN_SECRET"):
        Settings.from_env({"GS_ENV": "production"})
    assert Settings.from_env({"GS_ENV": "production", "GS_TOKEN_SECRET": "s" * 40}).production


def test_server_refuses_to_start_in_production_without_a_secret() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GS_TOKEN_SECRET"}
    run = subprocess.run(
        [sys.executable, "-m", "server"],
        env={**env, "GS_ENV": "production"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2
    assert "GS_TOKEN_SECRET" in run.stderr
