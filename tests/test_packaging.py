"""pyproject.toml's package list: every Python package of the checkout ships, and the folders
that hold only data (the weights) are listed too, so setuptools builds without warnings."""

from __future__ import annotations

from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def _packages_on_disk() -> set[str]:
    """Dotted names of the folders that a wheel must carry, found from the files."""
    found = {"layer_harmonizer.weights"}  # default.pt, no __init__.py
    for top, root in (("layer_harmonizer", REPO / "backend"), ("training", REPO)):
        for init in (root / top).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(root).parts))
    for folder in (REPO / "plugins").glob("*/harmonize"):
        host = folder.parent.name
        package = f"layer_harmonizer._plugins.{host}"
        found |= {package, f"{package}.harmonize"}
    return found


def test_every_package_is_listed_in_pyproject() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]
    listed = set(config["setuptools"]["packages"])
    assert listed == _packages_on_disk()
    assert config["setuptools"]["package-dir"]["layer_harmonizer"] == "backend/layer_harmonizer"
    data = config["setuptools"]["package-data"]
    assert (REPO / "backend" / "layer_harmonizer" / "weights" / "default.pt").is_file()
    assert data["layer_harmonizer.weights"] == ["*.pt"]
    assert {"*.cu", "*.h", "*.cpp"} <= set(data["layer_harmonizer.lut"])
