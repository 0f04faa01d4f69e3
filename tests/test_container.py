"""What the container relies on, checked without Docker: the package built from this tree
carries its data, scripts and page; the image starts the entry point the tests start and
health-checks the port it listens on; compose shares one image, restarts what it runs,
and its Prometheus and Grafana are provisioned with a dashboard of the metrics that exist;
the page's gift art is shipped and licensed. Building and running the image and compose
for real is `scripts/verify-container` (a command, not a test: it needs a Docker daemon
and minutes)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY

import server.metrics  # noqa: F401  (registers every giftstream metric)
from server.economy import load_catalog

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_carries_data_lua_and_static(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("giftstream-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for lua in (ROOT / "server/store/lua").glob("*.lua"):
        assert f"server/store/lua/{lua.name}" in names
    for data in (ROOT / "server/data").glob("*.toml"):
        assert f"server/data/{data.name}" in names
    for static in (ROOT / "server/static").rglob("*"):
        if static.is_file():
            assert static.relative_to(ROOT).as_posix() in names
    assert "client_sim/__main__.py" in names and "load/locustfile.py" in names


def test_image_starts_the_entry_point_the_tests_start() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    cmd = [line for line in lines if line.startswith("CMD ")]
    # The server stage's command (the load stage, a job, has its own).
    assert json.loads(cmd[0][4:]) == ["python", "-m", "server"]
    # Every test server is a server.child.ServerProcess (tests/live_server.py).
    live_server = (ROOT / "server/child.py").read_text()
    assert '[sys.executable, "-m", "server"]' in live_server
    assert "(ServerProcess)" in (ROOT / "tests/live_server.py").read_text()
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1].split()[1] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    assert any("/healthz" in line for line in lines)


def _dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")
    ]


def test_healthcheck_follows_gs_port_and_the_default_target_is_the_server() -> None:
    lines = _dockerfile()
    stages = [line for line in lines if line.startswith("FROM ")]
    assert stages[0] == "FROM python:3.11-slim AS server"
    # A plain `docker build .` gives the server image, not the load one.
    assert stages[-1] == "FROM server"
    checks = [line for line in lines if line.startswith("HEALTHCHECK")]
    server_check = checks[0]
    assert "GS_PORT" in server_check and "8000/healthz" not in server_check
    # The check's Python, run as the image runs it, builds the URL from GS_PORT.
    command = json.loads(server_check.split(" CMD ", 1)[1])
    code = (
        command[2]
        .replace("urllib.request.urlopen(", "print(")
        .replace(", timeout=2).status != 200", ")")
    )
    code = code.replace("sys.exit(", "(")
    for env, url in (
        ({"GS_PORT": "9137"}, "http://127.0.0.1:9137/healthz"),
        ({}, "http://127.0.0.1:8000/healthz"),
    ):
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == url
    # The load image is a job: it has no health check to inherit.
    assert checks[1:] == ["HEALTHCHECK NONE"]


def test_server_image_installs_no_load_extras_and_keeps_no_build_secret() -> None:
    lines = _dockerfile()
    load_at = lines.index("FROM server AS load")
    server_stage, load_stage = lines[:load_at], lines[load_at:]
    installs = [line for line in server_stage if "pip install" in line]
    assert installs and all("[load]" not in line and ".[" not in line for line in installs)
    assert any('pip install ".[load]"' in line for line in load_stage)
    for line in installs + [line for line in load_stage if "pip install" in line]:
        # pip's configuration comes in as build secrets (mounted for that step only).
        assert (
            "--mount=type=secret,id=pip.conf" in line
            and "PIP_CONFIG_FILE=/run/secrets/pip.conf" in line
        )
    assert not any(line.startswith(("COPY", "ADD")) and "pip" in line for line in lines)


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_compose_builds_one_image_and_restarts_what_it_runs() -> None:
    services = _compose()["services"]
    built = {name: s for name, s in services.items() if "build" in s}
    assert set(built) == {"server1", "server2", "bots"}
    assert {s["image"] for s in built.values()} == {"giftstream:latest"}
    assert {json.dumps(s["build"], sort_keys=True) for s in built.values()} == {
        json.dumps({"context": ".", "target": "server"}, sort_keys=True)
    }
    for name, service in services.items():
        assert service.get("restart") in ("unless-stopped", "on-failure"), name
    assert services["bots"]["restart"] == "on-failure"  # it ends by itself after --duration
    # The replicas keep the image's own health check; the bot has one of its own.
    assert "healthcheck" not in services["server1"] and "healthcheck" not in services["server2"]
    bots_check = services["bots"]["healthcheck"]["test"]
    assert bots_check[:2] == ["CMD", "python"] and "/healthz" not in " ".join(bots_check)
    assert services["bots"]["depends_on"]["server1"]["condition"] == "service_healthy"


def test_prometheus_scrapes_both_replicas_and_grafana_is_provisioned() -> None:
    services = _compose()["services"]
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        t
        for job in prom["scrape_configs"]
        if job["job_name"] == "giftstream"
        for c in job["static_configs"]
        for t in c["targets"]
    }
    assert targets == {"server1:8000", "server2:8000"}
    mounts = services["prometheus"]["volumes"] + services["grafana"]["volumes"]
    for mount in mounts:
        source = mount.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), mount
    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert [d["url"] for d in datasources] == ["http://prometheus:9090"]
    providers = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/giftstream.yml").read_text()
    )["providers"]
    assert [p["options"]["path"] for p in providers] == ["/etc/grafana/dashboards"]
    assert (
        "./deploy/grafana/dashboards:/etc/grafana/dashboards:ro" in services["grafana"]["volumes"]
    )
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/giftstream.json").read_text())
    uids = {d["uid"] for d in datasources}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] in uids, panel["title"]
            assert all(t["datasource"]["uid"] in uids for t in panel["targets"]), panel["title"]


SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}

# Metrics with panels on the dashboard ahead of their code, which is on its way to main
# (13.4's HTTP metrics, close codes and build info): while missing from server/metrics.py
# they are allowed, once there they are checked like every other. Remove a name when it
# has landed.
PENDING = {
    "giftstream_http_requests": "counter",
    "giftstream_http_request_seconds": "histogram",
    "giftstream_websocket_closes": "counter",
    "giftstream_build_info": "gauge",
}


def _exposed_metrics() -> dict[str, set[str]]:
    """Each giftstream metric family and the series names it exposes."""
    families: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        if family.name.startswith("giftstream_"):
            families[family.name] = {family.name + s for s in SUFFIXES.get(family.type, [""])}
    return families


def test_the_dashboard_shows_every_metric_and_only_metrics_that_exist() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/giftstream.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\bgiftstream_[a-z_]+", e)}
    families = _exposed_metrics()
    exposed = set().union(*families.values())
    pending = {
        name + suffix
        for name, kind in PENDING.items()
        if name not in families
        for suffix in SUFFIXES[kind]
    }
    assert used <= exposed | pending, sorted(used - exposed - pending)
    missing = [name for name, names in families.items() if not names & used]
    assert not missing, f"metrics with no panel: {missing}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_gift_has_shipped_licensed_art() -> None:
    art = ROOT / "server/static/gifts"
    catalog = load_catalog()
    license_text = (art / "LICENSE.md").read_text()
    assert "CC BY 4.0" in license_text and (art / "CC-BY-4.0.txt").is_file()
    for gift_id in [*catalog.gifts, "gift"]:
        svg = art / f"{gift_id}.svg"
        root = ET.parse(svg).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg", svg
        assert f"| {gift_id}.svg |" in license_text, gift_id
    # The page knows exactly the catalog's pictures (others fall back to gift.svg).
    ui = (ROOT / "server/static/ui.js").read_text()
    block = ui.split("const GIFT_ART = new Set([", 1)[1].split("]);", 1)[0]
    assert set(re.findall(r'"([a-z_]+)"', block)) == set(catalog.gifts)
    # And no gift is drawn with an emoji (which needs a font the machine may not have).
    assert not re.search(r"\\u\{1F", ui)


def test_verify_container_script_parses() -> None:
    script = ROOT / "scripts/verify-container"
    assert script.stat().st_mode & 0o111
    subprocess.run(["bash", "-n", str(script)], check=True)
