"""The project installs as a package: `pip install .` gives a working `explorer` command that finds
its presets outside the checkout."""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_package_folder_is_listed():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "explorer").rglob("__init__.py")}
    assert folders <= listed, sorted(folders - listed)
    assert {"explorer.bundled_presets", "explorer.bundled_assets"} <= listed


def test_runtime_requirements_match_requirements_txt():
    def names(lines):
        return {
            line.split(";")[0].split("#")[0].strip().split(">")[0].split("<")[0].split("=")[0].strip().lower()
            for line in lines
            if line.strip() and not line.strip().startswith(("#", "-r"))
        }

    declared = names(_pyproject()["project"]["dependencies"])
    assert declared == names((ROOT / "requirements.txt").read_text().splitlines())


@pytest.mark.slow
def test_pip_install_gives_a_working_command(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git not available")
    copy = tmp_path / "src"

    def skip(folder, names):  # the checkout's own stores and tests are not part of the package
        top = Path(folder) == ROOT
        return [
            n
            for n in names
            if n in (".git", "__pycache__") or n.endswith(".sqlite") or (top and n in ("runs", "tests"))
        ]

    shutil.copytree(ROOT, copy, ignore=skip)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)  # dependencies come from this Python
    python = env_dir / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", str(copy)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    command = env_dir / "bin" / "explorer"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    helped = subprocess.run([str(command), "--help"], capture_output=True, text=True, cwd=elsewhere, timeout=120)
    assert helped.returncode == 0 and "rescore" in helped.stdout
    listed = subprocess.run([str(command), "models"], capture_output=True, text=True, cwd=elsewhere, timeout=300)
    assert listed.returncode == 0 and "demo-gemma" in listed.stdout, listed.stderr[-2000:]
