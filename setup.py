"""Builds the native scoring ops (csrc/) as `baton.kernels._native`.

The CPU sources always build (unless BATON_NO_NATIVE=1); the CUDA sources are added when torch was built with CUDA and
nvcc is available. Metadata lives in pyproject.toml.
"""
import glob
import os

from setuptools import setup

from torch.utils import cpp_extension


def native_extension():
    cpp_sources = sorted(glob.glob("csrc/*.cpp"))
    cu_sources = sorted(glob.glob("csrc/*.cu"))
    # headers and the per-instruction-set kernel bodies (*.inc): a change rebuilds the sources
    depends = sorted(glob.glob("csrc/*.h") + glob.glob("csrc/*.inc"))
    # C++20: the minimum that torch 2.13 headers are written for (older torch builds with it too).
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
    with_cuda = bool(cu_sources) and cpp_extension.CUDA_HOME is not None and _torch_has_cuda()
    if os.environ.get("BATON_NO_CUDA") == "1":
        with_cuda = False
    if with_cuda:
        return cpp_extension.CUDAExtension(
            "baton.kernels._native",
            cpp_sources + cu_sources,
            define_macros=[("BATON_WITH_CUDA", "1")],
            depends=depends,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math"]},
            extra_link_args=["-fopenmp"],
        )
    return cpp_extension.CppExtension(
        "baton.kernels._native",
        cpp_sources,
        depends=depends,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )


def _torch_has_cuda():
    import torch

    return torch.version.cuda is not None


# BATON_NO_NATIVE=1 builds the pure-Python package alone (packaging checks; the scoring ops
# and native CPU kernels then report themselves unavailable and fall back where they can).
_skip_native = os.environ.get("BATON_NO_NATIVE") == "1"
ext_modules = [native_extension()] if glob.glob("csrc/*.cpp") and not _skip_native else []

setup(ext_modules=ext_modules, cmdclass={"build_ext": cpp_extension.BuildExtension})
