"""The installed distribution holds one top-level package, `baton`: the repo's engine/,
models/ and kernels/ folders ship as baton.engine, baton.models and baton.kernels, so a user's
own `engine` or `models` package is never shadowed."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # the pure-Python wheel: the native extension's location is checked from setup.py below
    env = dict(os.environ, BATON_NO_NATIVE="1")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out)], check=True, env=env, capture_output=True)
    (path,) = out.glob("baton-*.whl")
    return path


def test_wheel_has_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"baton", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    for sub in ("engine", "models", "kernels"):
        assert f"baton/{sub}/__init__.py" in names
    assert "baton/models/configs/qwen3-vl-2b.config.json" in names
    for size in ("small", "large"):  # the trained SynthVQA pair `baton demo` / `baton eval` use
        assert f"baton/models/trained/synthvqa-{size}/model.safetensors" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "baton = baton.engine.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_native_extension_is_named_under_baton():
    # a pybind11 module only imports under the name it was built with
    import importlib.util

    native = pytest.importorskip("baton.kernels._native")
    assert native.__name__ == "baton.kernels._native"
    assert Path(native.__file__).parent == Path(importlib.util.find_spec("baton.kernels").origin).parent


def test_fresh_environment_imports_baton_and_not_the_folders(wheel, tmp_path):
    venv = tmp_path / "venv"
    # system site packages supply torch and friends; the wheel itself goes into the venv
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    probe = (
        "import importlib, baton\n"
        "from baton import LLM, SamplingParams, MultiAgent, BatonError, CheckpointError, InvalidRequestError\n"
        "import baton.engine.scheduler, baton.models.config, baton.kernels.registry\n"
        "print('BATON', baton.__file__)\n"
        "for name in ('engine', 'models', 'kernels'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        print('MISSING', name)\n"
    )
    out = subprocess.run([str(py), "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"BATON {venv}" in out.stdout
    for name in ("engine", "models", "kernels"):
        assert f"MISSING {name}" in out.stdout


def test_models_and_kernels_never_import_the_engine():
    """Errors live in baton.errors, at the bottom of the import graph: the model and kernel
    layers stand alone."""
    import ast

    offenders = []
    for folder in ("models", "kernels"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                              if n == "baton.engine" or n.startswith("baton.engine.")]
    assert not offenders, offenders
