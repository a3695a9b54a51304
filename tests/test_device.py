"""--device auto|cpu|cuda: provider and torch device choice, and the errors, on a CPU-only machine."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnxruntime
import pytest
from click.testing import CliRunner
from imagefiles import write_digit_tree

from tvclean.main import cli
from tvcore import device as dev
from tvcore.config import Config, ExtractConfig
from tvcore.errors import TvcleanError
from tvcore.io.inference import FeatureExtractor
from tvcore.io.modelzoo import resolve_model
from tvcore.stages.extract import extract

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def small_data(root, per_class: int = 2):
    """root/train and root/val with two digit classes."""
    write_digit_tree(root / "train", classes=(0, 1), per_class=per_class)
    write_digit_tree(root / "val", classes=(0, 1), per_class=1, offset=per_class)
    return root
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="needs the torch extra")


@pytest.mark.parametrize("device, available, expected", [
    ("cpu", [CPU], [CPU]),
    ("cpu", [CUDA, CPU], [CPU]),
    ("auto", [CPU], [CPU]),
    ("auto", ["AzureExecutionProvider", CPU], [CPU]),
    ("auto", ["TensorrtExecutionProvider", CUDA, CPU], [CUDA, CPU]),
    ("cuda", [CUDA, CPU], [CUDA, CPU]),
])
def test_providers_follow_the_device_and_what_is_installed(device, available, expected):
    assert dev.onnx_providers(device, available) == expected


def test_cuda_without_the_gpu_build_is_a_one_line_error():
    with pytest.raises(TvcleanError) as error:
        dev.onnx_providers("cuda", [CPU])
    message = str(error.value)
    assert "\n" not in message
    assert message == ("--device cuda: this onnxruntime has no CUDA provider (it has "
                       "CPUExecutionProvider); install the GPU build: pip uninstall onnxruntime "
                       "&& pip install onnxruntime-gpu")
    with pytest.raises(TvcleanError, match=r"invalid device \(--device\): must be one of auto, "
                                           r"cpu, cuda, got 'gpu'"):
        dev.onnx_providers("gpu", [CPU])


def test_what_a_session_runs_on():
    assert dev.session_device("auto", [CUDA, CPU]) == "cuda"
    assert dev.session_device("cuda", [CUDA, CPU]) == "cuda"
    assert dev.session_device("auto", [CPU]) == "cpu"  # onnxruntime-gpu fell back to the CPU
    with pytest.raises(TvcleanError, match=r"^--device cuda: onnxruntime-gpu is installed but "
                                           r"could not use a GPU .*; use --device cpu or auto$"):
        dev.session_device("cuda", [CPU])


def test_batch_size_zero_is_the_devices_own():
    assert dev.batch_size_for(0, "cpu") == 16 and dev.batch_size_for(0, "cuda") == 64
    assert dev.batch_size_for(5, "cuda") == 5 and dev.batch_size_for(5, "cpu") == 5


def test_extractor_on_this_cpu_machine():
    model = resolve_model("efficientnet-lite0")
    with FeatureExtractor(model, threads=2, decode_workers=1, device="auto") as extractor:
        assert extractor.device == "cpu" and extractor.batch_size == 16
        assert extractor.session.get_providers() == [CPU] and extractor.streams == 2
    with pytest.raises(TvcleanError, match=r"^--device cuda: this onnxruntime has no CUDA"):
        FeatureExtractor(model, threads=1, decode_workers=1, device="cuda")


def test_gpu_build_that_falls_back_to_the_cpu(monkeypatch):
    """onnxruntime-gpu lists the CUDA provider even where no GPU works; the session then runs
    on the CPU: fine for auto (with the CPU's batch size and streams), an error for cuda."""
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    model = resolve_model("efficientnet-lite0")
    with FeatureExtractor(model, threads=2, decode_workers=1, device="auto") as extractor:
        assert extractor.device == "cpu" and extractor.batch_size == 16 and extractor.streams == 2
        images = np.zeros((3, 3, 224, 224), np.float32)
        assert extractor.features(images).shape == (3, 1280)
    with pytest.raises(TvcleanError, match=r"^--device cuda: onnxruntime-gpu is installed but"):
        FeatureExtractor(model, threads=1, decode_workers=1, device="cuda")


def test_cli_device_cuda_error_and_cpu_run(tmp_path):
    data = small_data(tmp_path / "data")
    runner = CliRunner()
    result = runner.invoke(cli, ["extract", str(data / "train"), str(data / "val"),
                                 "-o", str(tmp_path / "run"), "--device", "cuda"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == ["Error: --device cuda: this onnxruntime has no CUDA provider (it has "
                     + ", ".join(onnxruntime.get_available_providers())
                     + "); install the GPU build: pip uninstall onnxruntime && pip install "
                       "onnxruntime-gpu"]
    result = runner.invoke(cli, ["extract", str(data / "train"), str(data / "val"), "-o",
                                 str(tmp_path / "run"), "--device", "cpu", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "extract: on cpu, batches of 16" in (tmp_path / "run" / "log.txt").read_text()
    result = runner.invoke(cli, ["extract", str(data / "train"), "-o", str(tmp_path / "r2"),
                                 "--device", "gpu"])
    assert result.exit_code == 2 and "'gpu' is not one of 'auto', 'cpu', 'cuda'" in result.output


def test_extract_records_the_device_setting(tmp_path):
    data = small_data(tmp_path / "data", per_class=1)
    extract(data / "train", data / "val", tmp_path / "run",
            Config(extract=ExtractConfig(device="cpu", threads=1, decode_workers=1)),
            progress=False)
    text = (tmp_path / "run" / "config.toml").read_text()
    assert 'device = "cpu"' in text and 'precision = "fp32"' in text and "batch_size = 0" in text


# --- torch (fine-tuning) ----------------------------------------------------------------------

@needs_torch
def test_torch_device_choice():
    import torch
    assert dev.torch_device("cpu", cuda_available=True) == torch.device("cpu")
    assert dev.torch_device("auto", cuda_available=False) == torch.device("cpu")
    assert dev.torch_device("auto", cuda_available=True) == torch.device("cuda")
    assert dev.torch_device("cuda", cuda_available=True) == torch.device("cuda")
    with pytest.raises(TvcleanError, match=r"^--device cuda: torch .* cannot use a GPU .*; install "
                                           r"a CUDA build of torch 2\.13\.0 .*, or use --device cpu$"):
        dev.torch_device("cuda", cuda_available=False)
    assert dev.torch_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


@needs_torch
def test_trainer_keeps_model_and_batches_on_its_device(monkeypatch):
    """Every parameter and every batch the model sees is on the trainer's device; the
    exported model comes back to the CPU."""
    import torch
    from torch import nn

    from tvcore.config import FinetuneConfig
    from tvcore.nets.training import Trainer

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.classifier = nn.Linear(4, 2)
            self.seen = []

        def set_classifier(self, head):
            self.classifier = head

        def forward(self, images):
            self.seen.append(images.device)
            return self.classifier(self.conv(images).mean(dim=(2, 3)))

    trainer = Trainer(Tiny(), 3, FinetuneConfig(device="cpu"))
    assert trainer.device == torch.device("cpu")
    images = np.random.default_rng(0).standard_normal((4, 3, 8, 8), dtype=np.float32)
    labels = np.array([0, 1, 2, 0])
    loss, correct = trainer.step(images, labels, seed=0)
    assert np.isfinite(loss) and 0 <= correct <= 4
    trainer.score(images, labels)
    assert trainer.model.seen == [trainer.device] * 2
    assert {p.device for p in trainer.model.parameters()} == {trainer.device}
    assert trainer.model.classifier.out_features == 3
    assert all(p.device.type == "cpu" for p in trainer.cpu_model().parameters())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TvcleanError, match=r"^--device cuda: torch"):
        Trainer(Tiny(), 3, FinetuneConfig(device="cuda"))


@needs_torch
def test_cli_finetune_device_cuda_without_a_gpu(tmp_path, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = small_data(tmp_path / "data")
    result = CliRunner().invoke(cli, ["finetune", str(data / "train"), str(data / "val"), "-o",
                                      str(tmp_path / "run"), "--device", "cuda",
                                      "--no-pretrained", "--input-size", "32"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: --device cuda: torch ")
    assert len(result.output.strip().splitlines()) == 1


def test_decode_workers_take_the_cores_inference_leaves():
    from tvcore.cores import available_cores
    from tvcore.io.inference import decode_workers_for
    assert decode_workers_for("cpu", 0, 8) == 8  # inference on every core: they share them
    assert decode_workers_for("cpu", 6, 8) == 2 and decode_workers_for("cpu", 8, 8) == 1
    assert decode_workers_for("cuda", 1, 8) == 8  # the GPU infers; every core decodes
    with FeatureExtractor(resolve_model("efficientnet-lite0"), threads=1) as extractor:
        assert extractor.decode_workers == max(1, available_cores() - 1)


def test_gpu_provider_that_cannot_load_the_model(monkeypatch):
    """onnxruntime-gpu whose CUDA libraries are missing fails to create a CUDA session:
    auto falls back to the CPU, cuda says so in one line."""
    real = onnxruntime.InferenceSession

    def session(path, options=None, providers=None):
        if providers and providers[0] == CUDA:
            raise RuntimeError("CUDA failure 35:\n libcudnn.so.9 not found")
        return real(path, options, providers=providers)

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    model = resolve_model("efficientnet-lite0")
    with FeatureExtractor(model, threads=1, decode_workers=1, device="auto") as extractor:
        assert extractor.device == "cpu" and extractor.batch_size == 16
    with pytest.raises(TvcleanError, match=r"^--device cuda: model .*efficientnet-lite0.onnx does "
                                           r"not load on CUDAExecutionProvider \(CUDA failure 35: "
                                           r"libcudnn.so.9 not found\); use --device cpu or auto$"):
        FeatureExtractor(model, threads=1, decode_workers=1, device="cuda")


def test_clean_device_applies_to_fine_tuning_too():
    from tvclean.clean_cmd import run_config
    config = run_config(None, {"extract__device": "cpu", "finetune__enabled": True}, None)
    assert config.extract.device == config.finetune.device == "cpu"
    assert run_config(None, {}, None).finetune.device == "auto"
