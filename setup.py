"""Builds the native scoring ops (csrc/) as `kernels._native`.

The CPU sources always build; the CUDA sources are added when torch was built with CUDA and
nvcc is available. Metadata lives in pyproject.toml.
"""
import glob
import os

from setuptools import setup

from torch.utils import cpp_extension


def native_extension():
    cpp_sources = sorted(glob.glob("csrc/*.cpp"))
    cu_sources = sorted(glob.glob("csrc/*.cu"))
    # C++20: the minimum that torch 2.13 headers are written for (older torch builds with it too).
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
    with_cuda = bool(cu_sources) and cpp_extension.CUDA_HOME is not None and _torch_has_cuda()
    if os.environ.get("BATON_NO_CUDA") == "1":
        with_cuda = False
    if with_cuda:
        return cpp_extension.CUDAExtension(
            "kernels._native",
            cpp_sources + cu_sources,
            define_macros=[("BATON_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math"]},
            extra_link_args=["-fopenmp"],
        )
    return cpp_extension.CppExtension(
        "kernels._native",
        cpp_sources,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )


def _torch_has_cuda():
    import torch

    return torch.version.cuda is not None


ext_modules = [native_extension()] if glob.glob("csrc/*.cpp") else []

setup(ext_modules=ext_modules, cmdclass={"build_ext": cpp_extension.BuildExtension})
