"""The torch side of fine-tuning (torch extra; imported only by tvcore.finetune).

A Trainer holds a backbone with a fresh softmax head and its SGD optimizer on
one device (`--device`: the GPU when torch can use one), takes one step per
batch, scores batches, and saves / restores its state as plain state dicts
(written with torch.save, read back with weights_only=True, so a checkpoint
can never run code; they load on any device).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..atomicfile import atomic_write_bytes
from ..config import FinetuneConfig
from ..device import torch_device
from ..errors import TvcleanError
from .torchnets import Backbone

BATCHNORM_MOMENTUM = 0.1  # PyTorch's default; ResNet50 already has it


class Trainer:
    """A backbone with a new (D -> n_classes) linear head, trained by SGD on cross-entropy.

    The model lives on self.device (config.device resolved by tvcore.device.torch_device);
    batches are moved there per step.
    """

    def __init__(self, backbone: Backbone, n_classes: int, config: FinetuneConfig) -> None:
        self.device = torch_device(config.device)
        torch.manual_seed(config.seed)  # the head's initialisation
        backbone.set_classifier(nn.Linear(backbone.classifier.in_features, n_classes))
        follow_batch_statistics(backbone)
        self.model = backbone.to(self.device)
        self.optimizer = torch.optim.SGD(
            backbone.parameters(), lr=config.lr, momentum=config.momentum,
            nesterov=config.nesterov, weight_decay=config.weight_decay)

    def step(self, images: np.ndarray, labels: np.ndarray, seed: int) -> tuple[float, int]:
        """One SGD step on a batch; returns (summed loss, correct predictions).

        images: (b, 3, S, S) float32. labels: (b,) int64. seed: torch's RNG
        for this batch (drop-connect), so a resumed run repeats it exactly.
        """
        self.model.train()
        torch.manual_seed(seed)  # seeds the CUDA generators too
        images_on, targets = self._on_device(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(images_on)
        loss = F.cross_entropy(logits, targets)
        loss.backward()
        self.optimizer.step()
        return loss.item() * len(labels), int((logits.argmax(1) == targets).sum())

    @torch.no_grad()
    def score(self, images: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
        """(summed loss, correct predictions) of a batch in evaluation mode."""
        self.model.eval()
        images_on, targets = self._on_device(images, labels)
        logits = self.model(images_on)
        loss = F.cross_entropy(logits, targets, reduction="sum")
        return float(loss), int((logits.argmax(1) == targets).sum())

    def _on_device(self, images: np.ndarray, labels: np.ndarray
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(images).to(self.device), torch.from_numpy(labels).to(self.device))

    def cpu_model(self) -> Backbone:
        """The model in evaluation mode, moved to the CPU (for the ONNX export)."""
        self.model = self.model.cpu().eval()
        return self.model

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])


def follow_batch_statistics(model: nn.Module, momentum: float = BATCHNORM_MOMENTUM) -> None:
    """Let every batch-norm layer's running statistics follow the fine-tuning data at `momentum`.

    EfficientNet's layers keep TensorFlow's 0.01: their running statistics
    would lag the changing weights by hundreds of steps, so evaluation-mode
    accuracy after a short epoch (early stopping's signal) would be noise.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def save_state(path: str | Path, state: dict) -> None:
    """torch.save a dict of tensors and plain values, atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: str | Path) -> dict:
    """Read a checkpoint written by save_state, without executing pickled code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        message = " ".join(str(exc).split())[:200]
        raise TvcleanError(f"{path}: unreadable checkpoint ({message}); delete it to start "
                           f"over") from None


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """torch's seed for one training batch, from the run seed and the batch's position."""
    return int(np.random.SeedSequence([seed, epoch, batch]).generate_state(1)[0])


@contextmanager
def torch_threads(threads: int, default: int) -> Iterator[None]:
    """Run torch with `threads` intra-op threads (0: `default`), restoring the old setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or default)
    try:
        yield
    finally:
        torch.set_num_threads(before)
