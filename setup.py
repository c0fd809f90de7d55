"""Builds torchtl._C from csrc/ with torch.utils.cpp_extension.

No nvcc is needed: every kernel comes from ATen, which dispatches to CUDA at run time when the
installed torch has it, so a CppExtension built on a CPU-only machine runs on a GPU too.
"""
import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def extension_sources():
    # Every translation unit under csrc/, so new files need no edit here (CMake globs the same tree).
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "**", "*.cpp"), recursive=True))


setup(
    ext_modules=[
        CppExtension(
            name="torchtl._C",
            sources=extension_sources(),
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": ["-O3", "-DTORCHTL_PYTHON"]},
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
