"""pyproject.toml and environment.yml list the same packages with the same ranges."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

import pytest
import yaml

from tinylab.config.loader import PROJECT_ROOT

CONDA_NAMES = {"torch": "pytorch"}  # PyPI name -> conda-forge name where they differ


def _pyproject() -> dict:
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())


def _conda_dependencies() -> list:
    return yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())["dependencies"]


def _split(requirement: str) -> tuple[str, str]:
    for i, char in enumerate(requirement):
        if char in "<>=!~[ ":
            return requirement[:i].lower(), requirement[i:].replace(" ", "")
    return requirement.lower(), ""


def test_environment_matches_pyproject() -> None:
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    wanted = [_split(r) for r in project["dependencies"] + extras["dev"] + extras["lab"]]
    wanted = {(CONDA_NAMES.get(name, name), spec) for name, spec in wanted}
    conda = {_split(d) for d in _conda_dependencies() if isinstance(d, str)}
    conda -= {("python", "=3.11"), ("pip", "")}
    assert conda == wanted


def test_environment_installs_the_package_with_its_extras() -> None:
    pip_section = next(d["pip"] for d in _conda_dependencies() if isinstance(d, dict))
    assert pip_section == ['-e ".[dev]"'] or pip_section == ["-e .[dev]"]


def test_gpu_extra_holds_the_fused_kernels() -> None:
    gpu = {_split(r)[0] for r in _pyproject()["project"]["optional-dependencies"]["gpu"]}
    assert gpu == {"flash-attn", "liger-kernel", "torchao"}


def test_jupyterlab_is_an_extra_not_a_core_dependency() -> None:
    project = _pyproject()["project"]
    assert "jupyterlab" not in {_split(r)[0] for r in project["dependencies"]}
    assert {_split(r)[0] for r in project["optional-dependencies"]["lab"]} == {"jupyterlab"}


@pytest.mark.parametrize(
    ("preset", "expected"),
    [(None, "expandable_segments:True"), ("backend:native", "backend:native")],
)
def test_import_sets_the_measured_cuda_allocator_unless_the_user_did(preset, expected) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_CUDA_ALLOC_CONF"}
    if preset is not None:
        env["PYTORCH_CUDA_ALLOC_CONF"] = preset
    code = "import os, tinylab; print(os.environ['PYTORCH_CUDA_ALLOC_CONF'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected
