"""uv.lock, the one lock file ``./run`` and the Dockerfile install from, is the lock of pyproject.toml.

``./run`` and the image build already stop on a stale lock (``uv sync --locked``, ``uv export
--locked``); these tests say so in the suite, with the dependency named: every requirement that
pyproject.toml declares (runtime and the ``test`` extra) is what the lock was made from, and the lock
pins each at a version its range allows.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.helpers import ROOT

LOCK = ROOT / "uv.lock"
FIX = "run `.venv/bin/uv lock` and commit uv.lock"

# (name, extras, specifier, marker without the extra, extra or "")
Declared = tuple[str, frozenset[str], str, str, str]


def pyproject() -> dict[str, Any]:
    doc: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    return doc


def lock() -> dict[str, Any]:
    doc: dict[str, Any] = tomllib.loads(LOCK.read_text("utf-8"))
    return doc


def declared() -> set[Declared]:
    project = pyproject()["project"]
    groups = {"": project["dependencies"], **project.get("optional-dependencies", {})}
    out = set()
    for extra, reqs in groups.items():
        for raw in reqs:
            r = Requirement(raw)
            marker = str(r.marker) if r.marker else ""
            out.add((canonicalize_name(r.name), frozenset(r.extras), str(r.specifier), marker, extra))
    return out


EXTRA = re.compile(r"""^(?:(.*) and )?extra == ['"]([\w-]+)['"]$""")


def recorded() -> set[Declared]:
    """What uv made the lock from: the project's requirements as pyproject.toml said them then."""
    (root,) = (p for p in lock()["package"] if p["name"] == pyproject()["project"]["name"])
    out = set()
    for r in root["metadata"]["requires-dist"]:
        marker, extra = r.get("marker", ""), ""
        if m := EXTRA.match(marker):
            marker, extra = m.group(1) or "", m.group(2)
        out.add(
            (
                canonicalize_name(r["name"]),
                frozenset(r.get("extras", ())),
                str(Requirement(f"x{r.get('specifier', '')}").specifier),
                str(Marker(marker)) if marker else "",
                extra,
            )
        )
    return out


def test_the_lock_was_made_from_pyproject_as_it_is_now() -> None:
    now, then = declared(), recorded()
    assert {d for d in now if d[4] == "test"}, "pyproject.toml has no test extra?"
    assert now - then == set(), f"pyproject.toml declares what uv.lock was not made from: {FIX}"
    assert then - now == set(), f"uv.lock was made from requirements pyproject.toml no longer has: {FIX}"


def test_the_lock_pins_every_declared_dependency_within_its_range() -> None:
    packages: dict[str, list[dict[str, Any]]] = {}
    for p in lock()["package"]:
        packages.setdefault(canonicalize_name(p["name"]), []).append(p)
    for name, _, specifier, _, extra in declared():
        where = f"{name} (pyproject.toml, {'the ' + extra + ' extra' if extra else 'dependencies'})"
        assert name in packages, f"{where} is not in uv.lock: {FIX}"
        versions = [Version(p["version"]) for p in packages[name]]
        assert any(Requirement(f"x{specifier}").specifier.contains(v, prereleases=True) for v in versions), (
            f"{where}: uv.lock pins {versions}, outside {specifier}: {FIX}"
        )
    # every package the lock pins carries its hashes: pip --require-hashes and uv check them on install
    for p in lock()["package"]:
        if "registry" in p["source"]:
            files = [*p.get("wheels", ()), *([p["sdist"]] if "sdist" in p else [])]
            assert files and all(f["hash"].startswith("sha256:") for f in files), p["name"]


def test_run_and_the_dockerfile_install_from_the_lock_with_the_same_uv() -> None:
    run = (ROOT / "run").read_text("utf-8")
    dockerfile = (ROOT / "Dockerfile").read_text("utf-8")
    required = pyproject()["tool"]["uv"]["required-version"]
    assert required.startswith("==")
    pinned = re.search(r"^UV_VERSION=(\S+)$", run, re.M)
    assert pinned and pinned[1] == required[2:]
    assert re.findall(r"uv==(\S+)", dockerfile) == [required[2:]]
    assert re.search(r"uv sync [^\n]*--locked", run)
    assert all("uv==$UV_VERSION" in line for line in re.findall(r"pip install[^\n]*", run)), "pip: uv only"
    assert "uv export --locked" in dockerfile and "--require-hashes" in dockerfile
    assert re.search(r"pip install [^\n]*--no-deps[^\n]* \.$", dockerfile, re.M), "paw itself: --no-deps"


def uv() -> Path | None:
    binary = Path(sys.executable).parent / "uv"  # ./run puts it in .venv
    return binary if binary.exists() else None


def test_uv_itself_finds_the_lock_current() -> None:
    binary = uv()
    if binary is None:
        pytest.skip("uv is not in this virtualenv (./run installs it there)")
    result = subprocess.run(  # noqa: S603 - a fixed binary, our own project
        [str(binary), "lock", "--check", "--offline", "--quiet", "--project", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
