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
        }
    )
    assert s.redis_url == "redis://h:1/0" and s.wallet_buckets == 16 and s.diamonds_per_coin == 2
    assert s.cashout_min_diamonds == 100
    s = Settings.from_env({"REDIS_URL": "", "REDIS_CLUSTER_URLS": "redis://a:1, redis://b:2"})
    assert s.redis_url is None and s.redis_cluster_urls == ("redis://a:1", "redis://b:2")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GS_PORT": "eighty"}, "GS_PORT must be an integer, got 'eighty'"),
        ({"WALLET_BUCKETS": "0"}, "WALLET_BUCKETS must be at least 1, got 0"),
        ({"GS_WORKERS": "-1"}, "GS_WORKERS must be between 1 and 256, got -1"),
        ({"GS_SWEEP_INTERVAL_S": "x"}, "GS_SWEEP_INTERVAL_S must be a number, got 'x'"),
        # Ranges: 70000 is no port (it used to wrap around to 4464).
        ({"GS_PORT": "70000"}, "GS_PORT must be between 0 and 65535, got 70000"),
        ({"GS_WORKERS": "100000"}, "GS_WORKERS must be between 1 and 256"),
        # ASCII digits only: int() takes Arabic-Indic digits, float() takes nan and inf.
        ({"GS_PORT": "٨٠٠٠"}, "GS_PORT must be an integer"),
        ({"GS_PORT": "8_000"}, "GS_PORT must be an integer"),
        ({"GS_DRAIN_S": "nan"}, "GS_DRAIN_S must be a number"),
        ({"GS_DRAIN_S": "inf"}, "GS_DRAIN_S must be a number"),
        ({"GS_DRAIN_S": "-1"}, "GS_DRAIN_S must be between 0 and 3600"),
        # Allowed values, with a hint.
        (
            {"GS_ENV": "prod"},
            "GS_ENV must be development or production, got 'prod' (did you mean production?)",
        ),
        ({"GS_LOG_FORMAT": "xml"}, "GS_LOG_FORMAT must be text or json"),
        ({"GS_WS_COMPRESSION": "maybe"}, "GS_WS_COMPRESSION must be one of 1, true, yes, on"),
        # Redis URLs are parsed; a password never shows in the message.
        ({"REDIS_URL": "notaurl"}, "REDIS_URL must be a URL like redis://host:6379/0"),
        ({"REDIS_URL": "redis://:hunter2@h:99999/0"}, "REDIS_URL must be a URL like"),
        ({"REDIS_URL": "redis://:6379"}, "names no host"),
        ({"REDIS_URL": "redis://h:6379/zero"}, "the database after the / must be a number"),
        ({"REDIS_CLUSTER_URLS": "redis://a:1,b:2"}, "REDIS_CLUSTER_URLS must be a URL like"),
        ({"REDIS_CLUSTER_URLS": "unix:///run/r.sock"}, "REDIS_CLUSTER_URLS must be a URL"),
        ({"REDIS_URL": "redis://a:1", "REDIS_CLUSTER_URLS": "redis://b:2"}, "set only one"),
        ({"GS_HOST": "my host"}, "GS_HOST must be a host name or address"),
        (
            {"GS_ENV": "production", "GS_TOKEN_SECRET": "short"},
            "GS_TOKEN_SECRET must be at least 32 characters in production",
        ),
    ],
)
def test_malformed_values_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env)
    assert message in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_values_that_are_fine() -> None:
    # Booleans take 1/0, true/false, yes/no, on/off in any case; the same for every one.
    for raw, value in [("yes", True), ("ON", True), ("1", True), ("no", False), ("Off", False)]:
        assert Settings.from_env({"GS_WS_COMPRESSION": raw}).ws_compression is value
    s = Settings.from_env(
        {
            "GS_PORT": " 0 ",
            "REDIS_URL": "rediss://user:pw@redis.example:6380/2",
            "GS_DRAIN_S": "2.5",
            "GS_LOG_FORMAT": "json",
        }
    )
    assert s.port == 0 and s.redis_url == "rediss://user:pw@redis.example:6380/2"
    assert s.drain_s == 2.5 and s.log_format == "json"
    assert Settings.from_env({"REDIS_URL": "unix:///run/redis.sock"}).redis_url


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
