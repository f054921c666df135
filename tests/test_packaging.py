"""The wheel's metadata: pyspark is an extra, so ``pip install distunlearn`` on a platform
that brings its own Spark (Databricks, EMR, a Connect client) does not pull a second one."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    found = re.match(r"[A-Za-z0-9_.\-]+", requirement)
    assert found, requirement
    return found.group(0).lower().replace("_", "-")


def test_pyspark_is_an_extra_not_a_dependency(tmp_path):
    # The wheel as pip builds it for a user (isolated build environment from pyproject.toml).
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("distunlearn-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        # The console command's log4j2 file (commands/session.py passes it to the JVM) is package data.
        assert "distunlearn/commands/log4j2-quiet.properties" in archive.namelist()
        meta = Parser().parsestr(archive.read(name).decode())
    requires = meta.get_all("Requires-Dist") or []
    always = {_name(r) for r in requires if "extra ==" not in r}
    assert not always & {"pyspark", "delta-spark", "py4j", "grpcio"}, always
    assert {"numpy", "pyarrow", "pandas", "pyyaml"} <= always
    for extra, line in (("spark", "4.0."), ("spark42", "4.2.")):  # the two Spark lines (README, "Versions")
        pinned = [r.replace(" ", "") for r in requires if re.search(rf"extra\s*==\s*['\"]{extra}['\"]", r)]
        assert any(r.startswith(f"pyspark[connect]=={line}") for r in pinned), (extra, pinned)
        assert extra in (meta.get_all("Provides-Extra") or [])
