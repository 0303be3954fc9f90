"""Find bad pixels (hot, dead, stuck, flickering) in raw video frames: the example pipeline."""

import os
import platform

# torch's CPU math picks kernels by the machine's instruction set in three libraries, and each
# choice rounds the CNN's sums otherwise, so the trained weights would depend on whose x86-64
# machine ran `dvc repro`. Each is pinned to one choice that every x86-64 machine of the last
# decade runs alike: ATen's own kernels (reductions, Adam) and oneDNN's (the convolutions) at
# AVX2, and MKL's (the linear layers) on its COMPATIBLE branch, which Intel documents as giving
# the same results on Intel and non-Intel processors. About 3% slower training here. They are
# read when torch first runs a kernel, so they are set here, before any stage imports torch;
# a value in the environment wins. Apple silicon and GPUs run other kernels: see the README.
if platform.machine().lower() in {"x86_64", "amd64"}:
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    os.environ.setdefault("MKL_CBWR", "COMPATIBLE")
