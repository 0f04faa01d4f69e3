"""What the container relies on, tested here where Docker cannot run: the package built
from this tree carries its data, scripts and page, and the image starts the same entry
point the tests start."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

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
    assert [json.loads(c[4:]) for c in cmd] == [["python", "-m", "server"]]
    # Every test server is a server.child.ServerProcess (tests/live_server.py).
    live_server = (ROOT / "server/child.py").read_text()
    assert '[sys.executable, "-m", "server"]' in live_server
    assert "(ServerProcess)" in (ROOT / "tests/live_server.py").read_text()
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1].split()[1] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    assert any("/healthz" in line for line in lines)
