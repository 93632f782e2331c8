#!/usr/bin/env bash
# Compile-checks csrc/ without a GPU:
#   * every csrc/*.cu with nvcc for sm_80 and sm_90a (the kernels include no torch headers), with
#     ptxas -v: a kernel that spills registers (spill stores or loads > 0) fails the check,
#   * csrc/binding.cpp with g++ -fsyntax-only against torch's headers + the CUDA include dir,
#     with the defines torch's extension build uses.
# Prints what it checked; exits non-zero on any failure; skips (exit 0) when nvcc is absent.
# Env: PYTHON (default .venv/bin/python, else python3), NVCC (default nvcc), CXX (default g++),
# CUDA_HOME (default /usr/local/cuda), JOBS (parallel compiles, default 2), PTXAS_LOG_DIR (keep
# each source's nvcc -Xptxas -v log there as <source>.log and the PTX that same compile produced
# as <source>.compute_80.ptx / .compute_90a.ptx (nvcc -keep), for the kernel report card).
set -uo pipefail
cd "$(dirname "$0")/.."

NVCC="${NVCC:-nvcc}"
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "check_csrc: SKIPPED — nvcc not found (set NVCC or install the CUDA toolkit)"
  exit 0
fi
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
CXX="${CXX:-g++}"
CUDA_INC="${CUDA_HOME:-/usr/local/cuda}/include"
if [[ ! -f "$CUDA_INC/cuda_runtime_api.h" ]]; then
  CUDA_INC="$(dirname "$(dirname "$(readlink -f "$(command -v "$NVCC")")")")/include"
fi

py_incs='import sysconfig
from torch.utils import cpp_extension
print(" ".join("-I" + p for p in cpp_extension.include_paths() + [sysconfig.get_paths()["include"]]))'
if ! incs="$("$PYTHON" -c "$py_incs")"; then
  echo "check_csrc: FAIL  cannot read torch include paths with $PYTHON"
  exit 1
fi
abi="$("$PYTHON" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
export NVCC CXX CUDA_INC incs abi tmp
start=$SECONDS

check_one() {
  local src="$1" name what rc keep=()
  name="$(basename "$src")"
  if [[ "$src" == *.cu ]]; then
    if [[ -n "${PTXAS_LOG_DIR:-}" ]]; then mkdir -p "$tmp/$name.keep" && keep=(-keep -keep-dir "$tmp/$name.keep"); fi
    what="nvcc sm_80+sm_90a"
    # Same flags as setup.py's nvcc build, plus the half-precision defines torch adds.
    "$NVCC" -std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr -Icsrc \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
      -D__CUDA_NO_HALF2_OPERATORS__ -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a \
      -Xptxas -v "${keep[@]}" -c "$src" -o "$tmp/$name.o" >"$tmp/$name.log" 2>&1
    rc=$?
    if [[ -n "${PTXAS_LOG_DIR:-}" ]]; then
      mkdir -p "$PTXAS_LOG_DIR" && cp "$tmp/$name.log" "$PTXAS_LOG_DIR/$name.log"
      rm -f "$PTXAS_LOG_DIR/${name%.cu}".*.ptx
      cp "$tmp/$name.keep/"*.ptx "$PTXAS_LOG_DIR/" 2>/dev/null
    fi
    if [[ $rc -eq 0 ]] && grep -Eq "[1-9][0-9]* bytes spill (stores|loads)" "$tmp/$name.log"; then
      what="$what: register spills (ptxas -v)"
      grep -B2 -E "[1-9][0-9]* bytes spill (stores|loads)" "$tmp/$name.log" >"$tmp/$name.spills"
      mv "$tmp/$name.spills" "$tmp/$name.log"
      rc=1
    fi
  else
    what="$CXX -fsyntax-only (torch headers)"
    # C10_CUDA_NO_CMAKE_CONFIGURE_FILE: CPU builds of torch ship the c10/cuda headers without
    # their generated cmake macros file, which nothing here needs.
    # shellcheck disable=SC2086
    "$CXX" -fsyntax-only -std=c++17 -Icsrc $incs -I"$CUDA_INC" -DTORCH_EXTENSION_NAME=_C \
      -DTORCH_API_INCLUDE_EXTENSION_H -D_GLIBCXX_USE_CXX11_ABI="$abi" -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE \
      -Wno-c++20-extensions "$src" >"$tmp/$name.log" 2>&1
    rc=$?
  fi
  if [[ $rc -eq 0 ]]; then
    echo "check_csrc: ok    $what $src"
  else
    echo "check_csrc: FAIL  $what $src"
    cat "$tmp/$name.log"
    touch "$tmp/FAILED"
  fi
}
export -f check_one

# One job per source, JOBS at a time, the attention kernels (the slowest) first.
# shellcheck disable=SC2012
ls csrc/attention_*.cu csrc/binding.cpp csrc/*.cu | awk '!seen[$0]++' |
  xargs -P "${JOBS:-2}" -I{} bash -c 'check_one "$1"' _ {}

if [[ -e "$tmp/FAILED" ]]; then
  echo "check_csrc: FAILED after $((SECONDS - start)) s"
  exit 1
fi
echo "check_csrc: all passed in $((SECONDS - start)) s"
