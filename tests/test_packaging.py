"""The distribution: one ``seg`` package, no generic top-level names, every source folder inside the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"runtime": "seg/runtime", "train": "seg/train", "export": "seg/export", "toolkit": "seg/toolkit"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from this checkout (no network: the installed setuptools builds it)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(REPO)], check=True, capture_output=True, cwd=out)
    (built,) = out.glob("seg_toolkit-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_the_wheel_installs_only_the_seg_package(wheel_names: set[str]) -> None:
    tops = {name.split("/")[0] for name in wheel_names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"seg"}
    assert "seg/__init__.py" not in wheel_names  # a namespace package: the folders are seg's only content


def test_every_module_of_every_folder_is_in_the_wheel(wheel_names: set[str]) -> None:
    sources = {f"{FOLDERS[path.parts[0]]}/{Path(*path.parts[1:]).as_posix()}"
               for folder in FOLDERS for path in (p.relative_to(REPO) for p in (REPO / folder).rglob("*.py"))
               if "__pycache__" not in path.parts}
    assert sources and sources <= wheel_names, sorted(sources - wheel_names)


def test_console_script_points_into_seg(wheel: Path, wheel_names: set[str]) -> None:
    (entry_points,) = [name for name in wheel_names if name.endswith("entry_points.txt")]
    with zipfile.ZipFile(wheel) as archive:
        assert "seg = seg.toolkit.cli:main" in archive.read(entry_points).decode()
