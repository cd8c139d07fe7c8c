"""layer_harmonizer.install and ``harmonize install-plugin|uninstall-plugin``: folders, the
vendored client, pyzmq/msgpack from the host or from wheels, safe replace/uninstall."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from layer_harmonizer import cli
from layer_harmonizer import install as I
from layer_harmonizer.errors import InputError
from layer_harmonizer.wire.host_side import SETTINGS_FILE, Settings


def profile(tmp_path: Path) -> Path:
    return tmp_path / "GIMP" / "3.0"


def fake_wheel(folder: Path, dist: str, module: str, member: str | None = None) -> Path:
    """A minimal wheel: ``module/__init__.py`` (or a custom member name)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-1.0-cp313-cp313-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member or f"{module}/__init__.py", f"NAME = {module!r}\n")
        zf.writestr(f"{dist}-1.0.dist-info/METADATA", f"Name: {dist}\n")
    return path


def test_backend_command_without_a_harmonize_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An environment without the ``harmonize`` script (e.g. run from a checkout with
    PYTHONPATH): its interpreter with ``-m layer_harmonizer``, still absolute."""
    from layer_harmonizer.install.common import backend_command

    python = tmp_path / "env" / "bin" / "python"
    monkeypatch.setattr(sys, "executable", str(python))
    assert backend_command() == [str(python), "-m", "layer_harmonizer"]
    (python.parent).mkdir(parents=True)
    (python.parent / "harmonize").write_text("#!/bin/sh\n")
    assert backend_command() == [str(python.parent / "harmonize")]


def test_install_layout_settings_and_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(tmp_path / "runtime"))
    report = I.install_plugin("gimp", host_dir=profile(tmp_path), deps="host",
                              serve_args=["--device", "cpu"])  # fmt: skip
    target = profile(tmp_path) / "plug-ins" / "harmonize"
    assert report.plugin_dir == target and report.deps == "assumed"
    script = target / "harmonize.py"
    assert script.read_bytes() == (I.project_root() / "plugins/gimp/harmonize/harmonize.py"
                                   ).read_bytes()  # fmt: skip
    assert script.stat().st_mode & 0o111, "GIMP runs the plug-in by its shebang"
    assert_vendors_the_wire_package(target / "vendor")
    settings = Settings.from_dict(json.loads((target / SETTINGS_FILE).read_text()))
    # the absolute path of this environment's harmonize (a launcher's PATH may lack it)
    assert settings.serve_command == [str(Path(sys.executable).parent / "harmonize"), "serve"]
    assert settings.serve_args == ["--device", "cpu"]
    assert settings.runtime_dir == str(tmp_path / "runtime")
    assert json.loads((target / I.MARKER).read_text())["host"] == "gimp"
    assert not list(target.parent.glob(".harmonize-*")), "no staging folder left behind"


def assert_vendors_the_wire_package(vendor: Path) -> None:
    """``vendor/layer_harmonizer/`` holds exactly an ``__init__``, ``_version.py`` and the
    package's ``wire/`` folder, file for file."""
    package = vendor / "layer_harmonizer"
    assert sorted(p.name for p in package.iterdir()) == ["__init__.py", "_version.py", "wire"]
    source = Path(I.__file__).resolve().parents[1] / "wire"
    wanted = sorted(p.relative_to(source) for p in source.rglob("*.py"))
    copied = sorted(p.relative_to(package / "wire") for p in (package / "wire").rglob("*"))
    assert wanted and copied == wanted
    for rel in wanted:
        assert (package / "wire" / rel).read_bytes() == (source / rel).read_bytes(), rel


def test_vendored_client_imports_without_the_project(tmp_path: Path):
    """The copy in vendor/ works with only pyzmq + msgpack: no numpy, torch or platformdirs."""
    I.install_plugin("gimp", host_dir=profile(tmp_path), deps="host")
    vendor = profile(tmp_path) / "plug-ins" / "harmonize" / "vendor"
    code = (
        "import sys\n"
        "for m in ('numpy', 'torch', 'platformdirs', 'cv2'):\n"
        "    sys.modules[m] = None\n"
        f"sys.path.insert(0, {str(vendor)!r})\n"
        "from layer_harmonizer.wire import client, discovery, host_side\n"
        f"assert host_side.__file__.startswith({str(vendor)!r}), host_side.__file__\n"
        "assert host_side._client_module() is client\n"
        "print(discovery.endpoint_path())\n"
    )
    # -I: ignore the environment and the current directory (the checkout's backend/)
    subprocess.run([sys.executable, "-I", "-c", code], check=True, cwd=tmp_path)


def test_reinstall_replaces_and_uninstall_removes(tmp_path: Path):
    target = profile(tmp_path) / "plug-ins" / "harmonize"
    I.install_plugin("gimp", host_dir=profile(tmp_path), deps="host")
    (target / "stale.txt").write_text("old")
    I.install_plugin("gimp", host_dir=profile(tmp_path), deps="host")
    assert not (target / "stale.txt").exists()
    assert I.uninstall_plugin("gimp", host_dir=profile(tmp_path)) == target
    assert not target.exists()
    assert I.uninstall_plugin("gimp", host_dir=profile(tmp_path)) is None


def test_a_foreign_folder_is_never_touched(tmp_path: Path):
    target = profile(tmp_path) / "plug-ins" / "harmonize"
    target.mkdir(parents=True)
    (target / "harmonize.py").write_text("# someone else's plug-in\n")
    with pytest.raises(I.InstallError, match="not installed by harmonize"):
        I.install_plugin("gimp", host_dir=profile(tmp_path), deps="host")
    with pytest.raises(I.InstallError, match="not installed by harmonize"):
        I.uninstall_plugin("gimp", host_dir=profile(tmp_path))
    assert (target / "harmonize.py").read_text() == "# someone else's plug-in\n"


def test_deps_auto_uses_the_hosts_packages_when_present(tmp_path: Path):
    """This interpreter (the venv) has pyzmq and msgpack: nothing is vendored."""
    report = I.install_plugin("gimp", host_dir=profile(tmp_path), host_python=[sys.executable])
    assert report.deps == "host" and report.wheels == []
    assert report.host_python is not None
    assert report.host_python.version == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert not (report.plugin_dir / "vendor" / "zmq").exists()


def fake_python(tmp_path: Path, version: str, platform: str, has: bool) -> list[str]:
    script = tmp_path / "host-python"
    info = json.dumps({"version": version, "platform": platform, "zmq": has, "msgpack": has})
    script.write_text(f"#!/bin/sh\necho '{info}'\n")
    script.chmod(0o755)
    return [str(script)]


def test_deps_auto_vendors_wheels_for_a_host_without_them(tmp_path: Path):
    host = fake_python(tmp_path, "3.13", "linux-x86_64", has=False)
    wheels = tmp_path / "wheels"
    fake_wheel(wheels, "pyzmq", "zmq")
    fake_wheel(wheels, "msgpack", "msgpack")
    report = I.install_plugin("gimp", host_dir=profile(tmp_path), host_python=host,
                              wheel_dir=wheels)  # fmt: skip
    assert report.deps == "vendored" and len(report.wheels) == 2
    vendor = report.plugin_dir / "vendor"
    assert (vendor / "zmq" / "__init__.py").is_file()
    assert (vendor / "msgpack" / "__init__.py").is_file()
    assert json.loads((report.plugin_dir / I.MARKER).read_text())["deps"] == "vendored"


def test_vendor_downloads_for_the_hosts_version_and_platform(tmp_path, monkeypatch):
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **_kw: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        fake_wheel(dest, "pyzmq", "zmq")
        fake_wheel(dest, "msgpack", "msgpack")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    report = I.install_plugin("gimp", host_dir=profile(tmp_path), deps="vendor",
                              python_version="3.12", platform="win-amd64")  # fmt: skip
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "pip", "download"] and "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12"
    assert cmd[cmd.index("--platform") + 1] == "win_amd64"
    assert cmd[-2:] == ["pyzmq", "msgpack"]
    assert report.deps == "vendored"


def test_download_failure_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(subprocess, "run", lambda cmd, **_kw: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: No matching distribution found for pyzmq"))  # fmt: skip
    with pytest.raises(I.InstallError, match=r"(?s)No matching distribution.*--deps host"):
        I.install_plugin("gimp", host_dir=profile(tmp_path), deps="vendor",
                         python_version="3.99", platform="linux-x86_64")  # fmt: skip
    assert not (profile(tmp_path) / "plug-ins" / "harmonize").exists()
    assert not list((profile(tmp_path) / "plug-ins").glob(".harmonize-*"))


def test_unrunnable_host_python_needs_explicit_target(tmp_path: Path):
    with pytest.raises(I.InstallError, match="--python-version"):
        I.install_plugin("gimp", host_dir=profile(tmp_path),
                         host_python=[str(tmp_path / "no-such-python")])  # fmt: skip


def test_wheel_that_escapes_is_refused(tmp_path: Path):
    bad = fake_wheel(tmp_path / "w", "evil", "evil", member="../../escaped.py")
    with pytest.raises(I.InstallError, match="escapes"):
        I.unpack_wheels([bad], tmp_path / "vendor")
    assert not (tmp_path / "escaped.py").exists()


@pytest.mark.parametrize(
    ("platform", "first"),
    [("linux-x86_64", "manylinux_2_28_x86_64"), ("linux-aarch64", "manylinux_2_28_aarch64"),
     ("win-amd64", "win_amd64"), ("macosx-11.0-arm64", "macosx_11_0_arm64")],
)  # fmt: skip
def test_wheel_platforms(platform: str, first: str):
    assert I.wheel_platforms(platform)[0] == first


def test_wheel_platforms_unknown():
    with pytest.raises(I.InstallError, match="--platform"):
        I.wheel_platforms("plan9-mips")


def test_default_folders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert I.gimp_plugin_dir() == tmp_path / "cfg" / "GIMP" / "3.0" / "plug-ins" / "harmonize"
    flatpak = tmp_path / "home" / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP" / "3.0"
    flatpak.mkdir(parents=True)
    assert I.gimp_plugin_dir() == flatpak / "plug-ins" / "harmonize"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("APPDATA", str(tmp_path / "Roaming"))
    assert I.gimp_plugin_dir() == tmp_path / "Roaming" / "GIMP" / "3.0" / "plug-ins" / "harmonize"
    monkeypatch.setattr(sys, "platform", "darwin")
    mac = tmp_path / "home" / "Library" / "Application Support" / "GIMP" / "3.0"
    assert I.gimp_plugin_dir() == mac / "plug-ins" / "harmonize"


def test_unknown_host_and_bad_deps(tmp_path: Path):
    with pytest.raises(InputError, match="unknown plugin host"):
        I.install_plugin("photoshop", host_dir=tmp_path)
    with pytest.raises(InputError, match="--deps"):
        I.install_plugin("gimp", host_dir=tmp_path, deps="maybe")


def test_cli_install_and_uninstall(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    gimp_dir = str(profile(tmp_path))
    assert cli.main(["install-plugin", "gimp", "--gimp-dir", gimp_dir, "--deps", "host"]) == 0
    out = capsys.readouterr().out
    assert "installed the gimp plugin in" in out and "Harmonize Layer" in out
    assert (profile(tmp_path) / "plug-ins" / "harmonize" / "harmonize.py").is_file()
    assert cli.main(["uninstall-plugin", "gimp", "--gimp-dir", gimp_dir]) == 0
    assert "removed" in capsys.readouterr().out
    assert cli.main(["install-plugin", "krita-9", "--gimp-dir", gimp_dir]) == 2
    assert "unknown plugin host" in capsys.readouterr().err
