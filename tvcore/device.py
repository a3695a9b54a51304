"""Where the CNN runs: `--device auto|cpu|cuda`, for onnxruntime (extract) and torch (finetune).

auto: the GPU when the installed libraries can use one, else the CPU; cuda:
the GPU or a one-line error saying what to install; cpu: the CPU. onnxruntime
runs on an NVIDIA GPU only with the `onnxruntime-gpu` package, which replaces
`onnxruntime` (`pip uninstall onnxruntime && pip install onnxruntime-gpu`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import TvcleanError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
ORT_GPU_INSTALL = "pip uninstall onnxruntime && pip install onnxruntime-gpu"
TORCH_GPU_INSTALL = "a CUDA build of torch 2.13.0 (tvclean[torch] installs the CPU build)"
# Images per inference call when --batch-size is 0 (a GPU needs large batches to be busy;
# on the CPU 16 beat 32 on 2 cores: benchmarks/bench_extract.py).
BATCH_SIZE = {"cpu": 16, "cuda": 64}


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise TvcleanError(f"invalid device (--device): must be one of {', '.join(DEVICES)}, "
                           f"got {device!r}")
    return device


def onnx_providers(device: str, available: Sequence[str] | None = None) -> list[str]:
    """onnxruntime execution providers for `device`, best first.

    available: onnxruntime.get_available_providers() (None: ask onnxruntime).
    """
    check_device(device)
    if available is None:
        import onnxruntime
        available = onnxruntime.get_available_providers()
    if device == "cpu":
        return [CPU_PROVIDER]
    if CUDA_PROVIDER in available:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    if device == "cuda":
        raise TvcleanError(f"--device cuda: this onnxruntime has no CUDA provider (it has "
                           f"{', '.join(available) or 'none'}); install the GPU build: "
                           f"{ORT_GPU_INSTALL}")
    return [CPU_PROVIDER]


def session_device(device: str, providers: Sequence[str]) -> str:
    """"cuda" or "cpu": what a session created for `device` actually runs on.

    providers: session.get_providers(). onnxruntime-gpu falls back to the CPU
    (with a warning) when it finds no GPU or CUDA libraries; for --device cuda
    that is an error.
    """
    if providers and providers[0] == CUDA_PROVIDER:
        return "cuda"
    if device == "cuda":
        raise TvcleanError("--device cuda: onnxruntime-gpu is installed but could not use a GPU "
                           "(no NVIDIA GPU, driver or CUDA/cuDNN libraries found); use --device "
                           "cpu or auto")
    return "cpu"


def batch_size_for(batch_size: int, device: str) -> int:
    """--batch-size, with 0 meaning the device's own (BATCH_SIZE)."""
    return batch_size or BATCH_SIZE["cuda" if device == "cuda" else "cpu"]


def torch_device(device: str, cuda_available: bool | None = None) -> torch.device:
    """The torch.device for `device`. cuda_available: torch.cuda.is_available() (None: ask)."""
    import torch
    check_device(device)
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if device == "cpu" or (device == "auto" and not cuda_available):
        return torch.device("cpu")
    if not cuda_available:
        raise TvcleanError(f"--device cuda: torch {torch.__version__} cannot use a GPU (CPU build, "
                           f"or no NVIDIA GPU/driver); install {TORCH_GPU_INSTALL}, or use "
                           f"--device cpu")
    return torch.device("cuda")
