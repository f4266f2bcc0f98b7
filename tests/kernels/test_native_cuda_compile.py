"""The CUDA side of baton.kernels._native compiles (nvcc, compile only), so it cannot rot unseen.

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

ROOT = Path(__file__).resolve().parents[2]
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


def _compile(source: Path, out_dir: Path):
    if source.suffix == ".cu":
        # The flags setup.py's CUDAExtension gets from torch, plus its own nvcc flags.
        extra = list(cpp_extension.COMMON_NVCC_FLAGS)
        extra += ["-O3", "--use_fast_math", f"-arch={ARCH}", f"-I{CSRC}"]
    else:
        extra = _torch_flags() + ["-DTORCH_EXTENSION_NAME=_native", "-O0"]
    obj = out_dir / (source.name + ".o")
    cmd = [NVCC, "-c", str(source), "-o", str(obj), "-std=c++20", "-DBATON_WITH_CUDA=1",
           "-Xcompiler", "-fPIC", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return proc.returncode, obj, " ".join(cmd) + "\n" + proc.stdout + proc.stderr


# The kernels (.cu) and the sources that only CUDA builds compile: the tensor-facing glue and
# the bindings' CUDA dispatch.
KERNELS = sorted(CSRC.glob("*.cu"))
HOST = [CSRC / "scoring_cuda.cpp", CSRC / "bindings.cpp"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("cuda_objects")
    sources = KERNELS + HOST
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = pool.map(lambda s: _compile(s, out_dir), sources)
        return dict(zip(sources, results))


def _assert_compiled(compiled, sources):
    assert sources, "nothing to compile"
    failed = [f"{s.name} (exit {rc}):\n{log}" for s in sources for rc, _, log in [compiled[s]] if rc]
    assert not failed, "\n\n".join(failed)
    for source in sources:
        assert compiled[source][1].stat().st_size > 0, source.name


def test_cuda_kernels_compile_with_nvcc(compiled):
    _assert_compiled(compiled, KERNELS)


def test_cuda_host_sources_compile(compiled):
    _assert_compiled(compiled, HOST)


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils)")
def test_every_launcher_the_glue_calls_is_defined_by_a_kernel_file(compiled):
    # Catches a declaration in scoring_cuda.h drifting from its definition, which would
    # otherwise only show up when a CUDA build links.
    _assert_compiled(compiled, KERNELS + HOST)

    def symbols(obj, kind):
        # Mangled names: one token per line, argument types included.
        out = subprocess.run(["nm", kind, str(obj)], capture_output=True, text=True, check=True)
        return {line.split()[-1] for line in out.stdout.splitlines() if "N5baton4cuda" in line}

    needed = symbols(compiled[CSRC / "scoring_cuda.cpp"][1], "--undefined-only")
    defined = set().union(*(symbols(compiled[k][1], "--defined-only") for k in KERNELS))
    assert len(needed) >= 4, needed  # stats, attention, top tokens, segments
    assert needed <= defined, sorted(needed - defined)
