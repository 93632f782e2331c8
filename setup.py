"""Build script for ptft_fast.

Pure Python + Triton by default. When torch has CUDA and nvcc is found, also builds the
``ptft_fast._C`` extension from ``csrc/`` with torch's cpp_extension + ninja.

Environment switches:
  PTFT_BUILD_CUDA   auto (default) | 0 (skip) | 1 (force; fail loudly if it cannot build)
  TORCH_CUDA_ARCH_LIST  target archs, default "8.0;9.0a" (sm_80, sm_90a)
  MAX_JOBS          parallel compile jobs for ninja
"""

import glob
import os
import shutil
import sys
import time
import warnings

from setuptools import setup

# `pip install -e .` maps kernels/ and benchmarks/ into the package with setuptools' import finder,
# and setuptools then warns on every install that same-named folders could shadow the package
# (an information notice, not a problem); pip would print it as a warning of the build.
warnings.filterwarnings("ignore", message="Editable installation")

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGES = [
    "ptft_fast",
    "ptft_fast.ops",
    "ptft_fast.kernels",
    "ptft_fast.benchmarks",
]
# kernels/ and benchmarks/ live at the repo root but install inside the package: another PyPI
# project owns the top-level name `kernels`.
PACKAGE_DIR = {"ptft_fast.kernels": "kernels", "ptft_fast.benchmarks": "benchmarks"}


def _discover_packages():
    """All sub-packages of ptft_fast/ (those with an __init__.py), plus the mapped ones."""
    found = set(PACKAGES)
    for init in glob.glob(os.path.join(ROOT, "ptft_fast", "**", "__init__.py"), recursive=True):
        rel = os.path.relpath(os.path.dirname(init), ROOT)
        found.add(rel.replace(os.sep, "."))
    for mapped, src in PACKAGE_DIR.items():
        for init in glob.glob(os.path.join(ROOT, src, "**", "__init__.py"), recursive=True):
            rel = os.path.relpath(os.path.dirname(init), os.path.join(ROOT, src))
            found.add(mapped if rel == "." else mapped + "." + rel.replace(os.sep, "."))
    return sorted(found)


def _say(msg):
    print(f"[ptft_fast setup] {msg}", file=sys.stderr, flush=True)


def _cuda_build_plan():
    """Returns (ext_modules, cmdclass) — empty when the CUDA build is skipped (one line says why)."""
    mode = os.environ.get("PTFT_BUILD_CUDA", "auto").strip().lower()
    if mode in ("0", "false", "no", "off"):
        _say("CUDA extension skipped (PTFT_BUILD_CUDA=0); Triton and PyTorch backends only.")
        return [], {}
    force = mode in ("1", "true", "yes", "on")
    reason = None
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        torch = None
        reason = "torch is not installed in the build environment"
    if reason is None and torch.version.cuda is None:
        reason = f"torch {torch.__version__} is a CPU build"
    if reason is None and cpp_extension.CUDA_HOME is None and shutil.which("nvcc") is None:
        reason = "nvcc not found (set CUDA_HOME)"
    sources = sorted(glob.glob(os.path.join("csrc", "*.cu")) + glob.glob(os.path.join("csrc", "*.cpp")))
    if reason is None and not sources:
        reason = "csrc/ has no sources"
    if reason is not None:
        if force:
            raise RuntimeError(f"PTFT_BUILD_CUDA=1 but the CUDA extension cannot be built: {reason}")
        _say(f"CUDA extension skipped: {reason}; Triton and PyTorch backends only.")
        return [], {}

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
    include_dirs = [os.path.join(ROOT, "csrc")]
    try:  # CUTLASS/CuTe headers from the nvidia-cutlass package, when installed
        import cutlass_library

        cutlass_root = os.path.dirname(cutlass_library.__file__)
        include_dirs += glob.glob(os.path.join(cutlass_root, "source", "include")) + glob.glob(
            os.path.join(cutlass_root, "source", "tools", "util", "include")
        )
    except ImportError:
        pass
    ext = cpp_extension.CUDAExtension(
        name="ptft_fast._C",
        sources=sources,
        include_dirs=include_dirs,
        extra_compile_args={
            "cxx": ["-O3", "-std=c++17"],
            "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"],
        },
    )

    class TimedBuildExt(cpp_extension.BuildExtension):
        def run(self):
            start = time.time()
            _say(f"building ptft_fast._C for archs {os.environ['TORCH_CUDA_ARCH_LIST']} ...")
            super().run()
            _say(f"ptft_fast._C built in {time.time() - start:.1f} s")

    return [ext], {"build_ext": TimedBuildExt.with_options(use_ninja=True)}


ext_modules, cmdclass = _cuda_build_plan()

setup(
    packages=_discover_packages(),
    package_dir=PACKAGE_DIR,
    package_data={"ptft_fast": ["**/*.json", "**/*.yaml"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
