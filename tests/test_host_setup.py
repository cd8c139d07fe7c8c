"""How the real-host tests get their hosts: the tool check CI runs first and the explicit switch
that lets tests build host environments. Fast; needs neither GIMP nor Krita."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import conftest
from tests.test_gimp_host import ensure_gimp_chroot

REPO = Path(__file__).resolve().parents[1]
NEED_TOOLS = REPO / "tests" / "hosts" / "need-tools.sh"
CI = REPO / ".ci" / "run"


BASE = ("grep", "sort", "tr")
"""What need-tools.sh itself runs."""


def fake_bin(folder: Path, tools: list[str]) -> Path:
    """A PATH folder with the real ``BASE`` programs and, for each of ``tools``, a program that
    does nothing."""
    folder.mkdir()
    for tool in BASE:
        found = shutil.which(tool)
        assert found is not None, tool
        (folder / tool).symlink_to(found)
    for tool in tools:
        (folder / tool).symlink_to("/bin/true")
    return folder


def need_tools(path: Path) -> subprocess.CompletedProcess[str]:
    """need-tools.sh with only ``path`` on PATH and a host Python that imports anything."""
    env = {"PATH": str(path), "HARMONIZE_HOST_PYTHON": "/bin/true"}
    # bash itself by absolute path: the fake PATH has no bash
    return subprocess.run(
        ["/bin/bash", str(NEED_TOOLS)], env=env, capture_output=True, text=True, check=False
    )


def test_need_tools_names_the_package_of_what_is_missing(tmp_path: Path):
    tools = [t for t in conftest.host_tools() if not t.startswith("py:")]
    assert "xdotool" in tools and "Xvfb" in tools and "kritarunner" in tools
    done = need_tools(fake_bin(tmp_path / "all", tools))
    assert done.returncode == 0, done.stderr
    done = need_tools(fake_bin(tmp_path / "no-xdotool", [t for t in tools if t != "xdotool"]))
    assert done.returncode == 1
    assert "xdotool is not installed (apt-get install xdotool)" in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith("install: apt-get install xdotool")


def test_need_tools_checks_the_host_python(tmp_path: Path):
    tools = [t for t in conftest.host_tools() if not t.startswith("py:")]
    path = fake_bin(tmp_path / "bin", tools)
    env = {"PATH": str(path), "HARMONIZE_HOST_PYTHON": "/bin/false"}  # imports nothing
    done = subprocess.run(
        ["/bin/bash", str(NEED_TOOLS)], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert "cannot import zmq (apt-get install python3-zmq)" in done.stderr


def test_ci_installs_and_checks_every_host_tool_before_the_tests():
    packages = subprocess.run(
        ["bash", str(NEED_TOOLS), "--packages"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {"xdotool", "xvfb", "krita", "debootstrap", "python3-zmq"} <= set(packages)
    ci = CI.read_text()
    listed = ci.split('APT_PACKAGES="', 1)[1].split('"', 1)[0].replace("\\\n", " ").split()
    assert set(packages) <= set(listed)  # installs every package of the list
    tests = ci.index("\npython -m pytest")
    assert -1 < ci.index("\nbash tests/hosts/need-tools.sh\n") < tests  # checks it first
    assert -1 < ci.index("\nexport HARMONIZE_BUILD_HOSTS=1\n") < tests


def test_need_tools_refuses_an_unlisted_tool():
    with pytest.raises(ValueError, match=r"tools\.txt"):
        conftest.need_tools("gimp-2.10")


def test_need_tools_skip_names_the_package(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("HARMONIZE_REQUIRE_HOSTS", raising=False)
    monkeypatch.setattr(conftest.shutil, "which", lambda _tool: None)
    with pytest.raises(pytest.skip.Exception, match=r"xdotool missing \(apt-get install xdotool\)"):
        conftest.need_tools("xdotool")


@pytest.fixture
def no_chroot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty CI cache (no GIMP chroot) and no build switch."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("HARMONIZE_CI_CACHE", str(cache))
    monkeypatch.delenv("GIMP3_ROOT", raising=False)
    monkeypatch.delenv(conftest.BUILD_HOSTS_ENV, raising=False)
    return cache


@pytest.mark.skipif(sys.platform != "linux", reason="the GIMP chroot is Linux only")
def test_without_the_switch_nothing_is_built_and_the_skip_names_it(
    no_chroot: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("HARMONIZE_REQUIRE_HOSTS", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        ensure_gimp_chroot()
    reason = str(skipped.value)
    assert "no Debian 13 chroot (GIMP 3, Krita 5.2) at" in reason, reason
    assert "HARMONIZE_BUILD_HOSTS=1" in reason, reason
    assert list(no_chroot.iterdir()) == []  # nothing built, not even a lock file


@pytest.mark.skipif(sys.platform != "linux", reason="the GIMP chroot is Linux only")
def test_ci_without_the_switch_fails_naming_it(no_chroot: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HARMONIZE_REQUIRE_HOSTS", "1")
    with pytest.raises(pytest.fail.Exception, match="HARMONIZE_BUILD_HOSTS=1"):
        ensure_gimp_chroot()
    assert list(no_chroot.iterdir()) == []
