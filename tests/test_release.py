"""The release artefacts (issue 13): ``python -m layer_harmonizer.install.release`` writes the
Krita zip and the GIMP plug-in archive, atomically, with the vendored wire package and
pyzmq + msgpack per target; the plug-ins pick the wheel folder of their Python."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

from layer_harmonizer._version import __version__
from layer_harmonizer.install import release
from layer_harmonizer.install.krita import KRITA_ZIP_TARGETS, wheel_tag
from layer_harmonizer.wire import host_wheels
from tests.test_plugin_install import fake_wheel


def _wheel_args(tmp_path: Path) -> list[str]:
    for version, platform in {*KRITA_ZIP_TARGETS, *release.GIMP_ARCHIVE_TARGETS}:
        tag = wheel_tag(version, platform)
        fake_wheel(tmp_path / "wheels" / tag, "pyzmq", "zmq")
        fake_wheel(tmp_path / "wheels" / tag, "msgpack", "msgpack")
    return ["--wheels-from", str(tmp_path / "wheels")]


def test_one_command_builds_both_archives(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "out"
    assert release.main(["--out", str(out), *_wheel_args(tmp_path)]) == 0
    krita, gimp = (out / f"harmonize-{host}-{__version__}.zip" for host in ("krita", "gimp"))
    assert capsys.readouterr().out.split() == [str(krita), str(gimp)]
    assert sorted(p.name for p in out.iterdir()) == sorted([krita.name, gimp.name])  # no .partial
    with zipfile.ZipFile(krita) as zf:
        names = set(zf.namelist())
    assert {"harmonize.desktop", "harmonize/", "harmonize/__init__.py"} <= names
    with zipfile.ZipFile(gimp) as zf:
        names = set(zf.namelist())
        script = zf.getinfo("harmonize/harmonize.py")
    assert (script.external_attr >> 16) & 0o111, "GIMP runs harmonize.py by its shebang"
    assert {n.split("/")[0] for n in names} == {"harmonize"}  # one folder to extract
    for member in ("harmonize/", "harmonize/gimp_version.py", "harmonize/error_dialog.py",
                   "harmonize/gimp_io.py",
                   "harmonize/vendor/layer_harmonizer/wire/host_side.py",
                   "harmonize/vendor/layer_harmonizer/_version.py",
                   "harmonize/installed-by-harmonize.json"):  # fmt: skip
        assert member in names, member
    assert not [n for n in names if n.endswith(("settings.json", ".pyc"))]
    for version, platform in release.GIMP_ARCHIVE_TARGETS:
        for module in ("zmq", "msgpack"):
            assert f"harmonize/wheels/{wheel_tag(version, platform)}/{module}/__init__.py" in names


def test_a_missing_wheels_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code = release.main(["--out", str(tmp_path / "out"), "--wheels-from", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("harmonize: error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_the_plugin_adds_the_wheel_folder_of_its_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(sys, "path", list(sys.path))
    mine, other = host_wheels.wheel_tags()[0], "cp27-plan9_mips"
    for tag in (mine, other):
        (tmp_path / tag).mkdir()
    assert host_wheels.add_wheel_folders(tmp_path) == [str(tmp_path / mine)]
    assert sys.path[-1] == str(tmp_path / mine) and str(tmp_path / other) not in sys.path
    assert host_wheels.add_wheel_folders(tmp_path) == []  # once
