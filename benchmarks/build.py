"""Build cost of torchtl._C, as a multiple of the smallest torch extension, measured in one run.

Times, on this machine and in this run, with ccache off:
  - a one-file extension (one .cpp including torch/extension.h, built by torch.utils.cpp_extension),
    before and after the rest, the two averaged so that a change in the machine's load during the
    run weighs on both sides alike;
  - a fresh build of torchtl._C from a copy of setup.py and csrc/;
  - an incremental rebuild after touching one .cpp (csrc/models/resnet.cpp by default);
  - with --cmake, a fresh CMake build of the C++ library, its tests and programs (make cpp-test's build).
and prints the fresh build time divided by the one-file time (wall clock, and CPU time beside it).

    python benchmarks/build.py [--jobs 2] [--cmake]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ONE_FILE_SETUP = textwrap.dedent("""
    from setuptools import setup
    from torch.utils.cpp_extension import BuildExtension, CppExtension
    setup(name="one_file", ext_modules=[CppExtension("one_file", ["one_file.cpp"], extra_compile_args=["-O3"])],
          cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
""")
ONE_FILE_SOURCE = textwrap.dedent("""
    #include <torch/extension.h>
    torch::Tensor twice(const torch::Tensor& x) { return x * 2; }
    PYBIND11_MODULE(one_file, m) { m.def("twice", &twice); }
""")


def _env(jobs: int) -> dict:
    env = dict(os.environ, MAX_JOBS=str(jobs), CCACHE_DISABLE="1", TORCH_NO_COMPILER_WRAPPER="1")
    return env


def timed(cmd, cwd, env) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"command failed in {cwd}: {' '.join(cmd)}\n{done.stdout[-4000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def one_file_extension(work: str, env: dict) -> tuple[float, float]:
    folder = tempfile.mkdtemp(dir=work, prefix="one_file_")
    with open(os.path.join(folder, "setup.py"), "w") as f:
        f.write(ONE_FILE_SETUP)
    with open(os.path.join(folder, "one_file.cpp"), "w") as f:
        f.write(ONE_FILE_SOURCE)
    return timed([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], folder, env)


def copy_sources(work: str) -> str:
    folder = os.path.join(work, "torchtl_src")
    os.makedirs(folder)
    shutil.copy(os.path.join(ROOT, "setup.py"), folder)
    for name in ("csrc", "torchtl", "tests", "examples", "cmake"):
        if os.path.isdir(os.path.join(ROOT, name)):
            shutil.copytree(os.path.join(ROOT, name), os.path.join(folder, name),
                            ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(os.path.join(ROOT, "CMakeLists.txt"), folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel compile jobs (MAX_JOBS)")
    parser.add_argument("--touch", default="csrc/models/resnet.cpp", help="the source touched for the incremental rebuild")
    parser.add_argument("--cmake", action="store_true", help="also time a fresh CMake build of the library, tests and programs")
    args = parser.parse_args()
    env = _env(args.jobs)
    with os.popen("uptime") as f:
        print(f"load: {f.read().strip()}; {args.jobs} jobs, ccache off")

    with tempfile.TemporaryDirectory(prefix="torchtl_build_") as work:
        one_a = one_file_extension(work, env)
        src = copy_sources(work)
        build = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
        fresh = timed(build, src, env)
        os.utime(os.path.join(src, args.touch))
        incremental = timed(build, src, env)
        one_b = one_file_extension(work, env)
        one = ((one_a[0] + one_b[0]) / 2, (one_a[1] + one_b[1]) / 2)
        rows = [("one-file extension (mean of 2)", one), ("torchtl._C, fresh", fresh),
                (f"torchtl._C, after touching {args.touch}", incremental)]
        if args.cmake:
            import torch

            cmake_dir = os.path.join(src, "build", "cpp")
            configure = ["cmake", "-S", src, "-B", cmake_dir, f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                         f"-DTORCHTL_TEST_PYTHON={sys.executable}"]
            timed(configure, src, env)
            rows.append(("CMake library + tests + programs, fresh",
                         timed(["cmake", "--build", cmake_dir, f"-j{args.jobs}"], src, env)))

    print(f"{'build':48s} {'wall s':>8s} {'CPU s':>8s} {'wall / one-file':>16s}")
    for name, (wall, cpu) in rows:
        print(f"{name:48s} {wall:8.1f} {cpu:8.1f} {wall / one[0]:16.2f}")
    print(f"fresh build ratio: {fresh[0] / one[0]:.2f} one-file extensions (wall), "
          f"{fresh[1] / one[1]:.2f} (CPU)")


if __name__ == "__main__":
    main()
