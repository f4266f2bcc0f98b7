"""The CUDA side of kernels._native compiles (nvcc, compile only), so it cannot rot unseen.

Development and CI machines have nvcc but no GPU and a CPU build of torch, so the CUDA
kernels are never built by `pip install -e .` there. These tests compile every csrc/*.cu file
and the CUDA-only host sources with the flags a CUDA build would use. Skipped without nvcc.
"""
import concurrent.futures
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
ARCH = "sm_80"  # the oldest GPU generation with native bfloat16


def _find_nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return None


NVCC = _find_nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (PATH, CUDA_HOME, /usr/local/cuda)")


def _torch_flags():
    flags = [f"-I{p}" for p in cpp_extension.include_paths()]
    flags += [f"-I{sysconfig.get_paths()['include']}", f"-I{CSRC}"]
    flags += [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    torch_include = Path(cpp_extension.include_paths()[0])
    if not (torch_include / "c10/cuda/impl/cuda_cmake_macros.h").exists():
        # CPU wheels of torch ship the c10/cuda headers but not this generated one.
        flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    return flags


def _compile(source: Path, out_dir: Path, extra):
    cmd = [NVCC, "-c", str(source), "-o", str(out_dir / (source.name + ".o")), "-std=c++20",
           "-DBATON_WITH_CUDA=1", "-Xcompiler", "-fPIC", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return source.name, proc.returncode, " ".join(cmd) + "\n" + proc.stdout + proc.stderr


def _compile_all(sources, tmp_path, extra):
    assert sources, "nothing to compile"
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda s: _compile(s, tmp_path, extra), sources))
    failed = [f"{name} (exit {rc}):\n{log}" for name, rc, log in results if rc != 0]
    assert not failed, "\n\n".join(failed)
    for source in sources:
        assert (tmp_path / (source.name + ".o")).stat().st_size > 0


def test_cuda_kernels_compile_with_nvcc(tmp_path):
    # The flags setup.py's CUDAExtension gets from torch plus its own nvcc flags.
    flags = list(cpp_extension.COMMON_NVCC_FLAGS) + ["-O3", "--use_fast_math", f"-arch={ARCH}"]
    _compile_all(sorted(CSRC.glob("*.cu")), tmp_path, flags + [f"-I{CSRC}"])


def test_cuda_host_sources_compile(tmp_path):
    # The tensor-facing CUDA glue and the bindings' CUDA dispatch exist only in CUDA builds.
    sources = [CSRC / "scoring_cuda.cpp", CSRC / "bindings.cpp"]
    _compile_all(sources, tmp_path, _torch_flags() + ["-DTORCH_EXTENSION_NAME=_native", "-O0"])
