"""Find bad pixels (hot, dead, stuck, flickering) in raw video frames: the example pipeline."""

import os

# oneDNN picks its kernels by instruction set, and its AVX-512 kernels round the CNN's
# gradients otherwise than its AVX2 ones: capped at AVX2, an AVX-512 machine runs the kernels an
# AVX2-only one does (about 7% slower training here). Read when torch first runs a kernel, so
# set it here, before any stage imports torch. A value in the environment wins.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
