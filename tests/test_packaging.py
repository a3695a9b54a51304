"""The wheel holds every module of the tree, the embedded model and data, and the licence."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(ROOT)], check=True,
                   capture_output=True, timeout=300)
    (built,) = out.glob("tvclean-*.whl")
    return zipfile.ZipFile(built)


def test_every_library_and_cli_module_is_packaged(wheel):
    names = set(wheel.namelist())
    expected = [f"tvcore/{p.relative_to(ROOT / 'tvcore').as_posix()}"
                for p in (ROOT / "tvcore").rglob("*.py")]
    expected += [f"tvclean/{p.relative_to(ROOT / 'cli').as_posix()}"
                 for p in (ROOT / "cli").glob("*.py")]
    missing = [name for name in expected if name not in names]
    assert not missing, f"not in the wheel: {missing}"


def test_model_data_and_licence_are_packaged(wheel):
    names = set(wheel.namelist())
    assert "tvcore/models/efficientnet-lite0.onnx" in names
    assert "tvcore/data/fashion-mnist-demo.npz" in names
    licence = [n for n in names if n.endswith("licenses/LICENSE")]
    assert licence and b"Apache License" in wheel.read(licence[0])
    assert not any(n.startswith("benchmarks/") for n in names)  # benchmark code stays out
