# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""meta/execution-environment.yml: ansible-builder renders it into a build context that installs the collection's
requirements, and reads the same file when another execution environment includes the collection. A missing
ansible-builder fails the test (it is in tests/requirements-dev.txt)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EE = ROOT / "meta" / "execution-environment.yml"


def builder() -> str:
    local = Path(sys.executable).parent / "ansible-builder"
    found = str(local) if local.exists() else shutil.which("ansible-builder")
    if not found:
        pytest.fail("ansible-builder is not installed: it is in tests/requirements-dev.txt (make venv)")
    return found


def requirements(path: Path = ROOT / "requirements.txt") -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def test_ansible_builder_create_renders_the_context(tmp_path):
    context = tmp_path / "context"
    proc = subprocess.run(
        [builder(), "create", "-f", str(EE), "-c", str(context), "--output-filename", "Containerfile", "-v", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    containerfile = (context / "Containerfile").read_text()
    assert containerfile.startswith("ARG EE_BASE_IMAGE=") or "FROM " in containerfile
    assert "quay.io/centos/centos:stream9" in containerfile
    assert "ansible-core>=2.16" in containerfile and "ansible-runner" in containerfile
    # the collection's Python requirements and the collection itself go into the build
    built = (context / "_build" / "requirements.txt").read_text().split()
    assert requirements() and set(requirements()) <= set(built)
    assert "requirements.txt" in containerfile and "requirements.yml" in containerfile
    galaxy = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    assert {"name": "hostdev.vfio"} in galaxy["collections"]


def test_another_execution_environment_finds_the_requirements():
    """ansible-builder's introspection reads meta/execution-environment.yml of every included collection and the
    requirement files it names, relative to the collection root."""
    from ansible_builder._target_scripts import introspect

    python, system = introspect.process_collection(str(ROOT))
    assert python == requirements() and system == []
    # a build from meta/ reads meta/requirements.txt: the same requirements
    assert requirements(ROOT / "meta" / "requirements.txt") == requirements()
