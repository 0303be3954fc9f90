"""What branchflow knows of Azure VM sizes, offline: GPUs per node and their CUDA generation.

`compile` uses it to start one process per GPU, to refuse retired sizes, and to put GPU nodes
(the N-series) on the CUDA environment. Every GPU here is Turing (sm_75) or later, which the
locked PyPI torch (CUDA 13) has kernels for; CUDA 13 has none for Volta (V100) and older, and
every size with those GPUs is retired. `submit` checks every cluster it would create against
the sizes the workspace's region offers, which also covers sizes this table does not name.

Sources: Azure's size pages for the NCasT4_v3, NC A10 v4, NC A100 v4, ND A100 v4, NCads H100 v5
and ND H100 v5 series, and its retirement notices (NCv3 on 2025-09-30; NC, NCv2 and ND on
2023-08-31).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSize:
    """A GPU size: `count` GPUs per node, of compute capability `capability` (sm_XX as XX)."""

    gpu: str
    count: int
    capability: int


GPU_SIZES = {
    # NCasT4_v3: Turing
    "Standard_NC4as_T4_v3": GpuSize("NVIDIA T4", 1, 75),
    "Standard_NC8as_T4_v3": GpuSize("NVIDIA T4", 1, 75),
    "Standard_NC16as_T4_v3": GpuSize("NVIDIA T4", 1, 75),
    "Standard_NC64as_T4_v3": GpuSize("NVIDIA T4", 4, 75),
    # NC A10 v4: Ampere
    "Standard_NC8ads_A10_v4": GpuSize("NVIDIA A10", 1, 86),
    "Standard_NC16ads_A10_v4": GpuSize("NVIDIA A10", 1, 86),
    "Standard_NC32ads_A10_v4": GpuSize("NVIDIA A10", 2, 86),
    # NC A100 v4, ND A100 v4: Ampere
    "Standard_NC24ads_A100_v4": GpuSize("NVIDIA A100", 1, 80),
    "Standard_NC48ads_A100_v4": GpuSize("NVIDIA A100", 2, 80),
    "Standard_NC96ads_A100_v4": GpuSize("NVIDIA A100", 4, 80),
    "Standard_ND96asr_v4": GpuSize("NVIDIA A100", 8, 80),
    "Standard_ND96amsr_A100_v4": GpuSize("NVIDIA A100", 8, 80),
    # NCads H100 v5, ND H100 v5: Hopper
    "Standard_NC40ads_H100_v5": GpuSize("NVIDIA H100", 1, 90),
    "Standard_NC80adis_H100_v5": GpuSize("NVIDIA H100", 2, 90),
    "Standard_ND96isr_H100_v5": GpuSize("NVIDIA H100", 8, 90),
}
RETIRED = {
    **dict.fromkeys(("Standard_NC6s_v3", "Standard_NC12s_v3", "Standard_NC24s_v3"), "2025-09-30"),
    **dict.fromkeys(
        (
            "Standard_NC6",
            "Standard_NC12",
            "Standard_NC24",
            "Standard_NC24r",
            "Standard_NC6s_v2",
            "Standard_NC12s_v2",
            "Standard_NC24s_v2",
            "Standard_ND6s",
            "Standard_ND12s",
            "Standard_ND24s",
        ),
        "2023-08-31",
    ),
}
REPLACEMENT = "Standard_NC4as_T4_v3 (1 T4) or Standard_NC24ads_A100_v4 (1 A100)"
_CUDA_PACKAGE = re.compile(r"^(?:nvidia-|cuda-|triton\b)", re.I)
_CUDA_RUNTIME = re.compile(r"^(?:cuda-toolkit|nvidia-cuda-runtime(?:-cu\d+)?)==(\d+)\.", re.I)
# The oldest Linux driver branch each CUDA major runs on (NVIDIA's minor version compatibility:
# CUDA 13.x needs a 580 driver or later, CUDA 12.x a 525 one).
DRIVER_FOR_CUDA = {13: 580, 12: 525}


def is_gpu(size: str) -> bool:
    """Azure's N-series (`Standard_N...`) are its GPU sizes."""
    return size.lower().startswith("standard_n")


def is_cuda_package(pin: str) -> bool:
    """A package only GPU nodes need: NVIDIA's CUDA libraries, `cuda-*` and triton."""
    return bool(_CUDA_PACKAGE.match(pin.strip()))


def minimum_driver(pins: Iterable[str]) -> int | None:
    """The oldest NVIDIA driver branch the pinned CUDA runtime (PyPI's torch pulls it) runs on,
    or None when the pins bring no CUDA runtime branchflow knows."""
    for pin in pins:
        found = _CUDA_RUNTIME.match(pin.strip())
        if found:
            return DRIVER_FOR_CUDA.get(int(found.group(1)))
    return None
