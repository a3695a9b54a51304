"""Running a feature-extractor model over image files: onnxruntime fed by decoding threads.

Decoding runs in a thread pool a couple of batches ahead of onnxruntime, so
the CPU decodes the next batch while the model runs on this one.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from ..cores import available_cores
from ..device import CUDA_PROVIDER, batch_size_for, onnx_providers, session_device
from ..errors import TvcleanError, one_line
from .images import load_image
from .modelzoo import ModelSpec

if TYPE_CHECKING:
    import onnxruntime as ort

PREFETCH_BATCHES = 2  # batches decoding beyond those being inferred
MAX_STREAMS = 4  # concurrent inference calls; each holds a batch of activations
GPU_STREAMS = 2  # on a GPU: one batch is copied in/out while the other runs


class FeatureExtractor:
    """One model in onnxruntime, fed by a pool of image-decoding threads.

    threads: cores for inference (0 = all). On the CPU they run as up to
    MAX_STREAMS concurrent inference calls on one session, each with threads /
    streams onnxruntime threads: on few cores, single-threaded calls side by
    side use the CPU better than one call split over all cores, and leave no
    idle gaps for the decoders to wait in. On a GPU, GPU_STREAMS calls.
    decode_workers: decoding threads (0 = decode_workers_for: the cores that
    inference leaves, or every core where they share them). device: "auto",
    "cpu" or "cuda" (tvcore.device); self.device is where it runs.
    batch_size: 0 = the device's own. Use as a context manager.
    """

    def __init__(self, model: ModelSpec, batch_size: int = 0, threads: int = 0,
                 decode_workers: int = 0, max_pixels: int = 89_478_485, device: str = "auto"):
        self.model = model
        self.max_pixels = max_pixels
        cores = available_cores()
        inference_threads, threads = threads, threads or cores
        providers = onnx_providers(device)
        cpu_streams = min(threads, MAX_STREAMS)
        self.streams = GPU_STREAMS if providers[0] == CUDA_PROVIDER else cpu_streams
        self.session = _open_session(model, max(1, threads // self.streams), providers, device)
        self.device = session_device(device, self.session.get_providers())
        if self.device == "cpu":
            self.streams = cpu_streams  # also when onnxruntime-gpu fell back to the CPU
        self.batch_size = batch_size_for(batch_size, self.device)
        self.input_name, self.output_name = _io_names(self.session, model)
        self.dim = self._probe_dim()
        self.decode_workers = decode_workers or decode_workers_for(self.device, inference_threads,
                                                                  cores)
        self.decoders = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="tvclean-decode")
        self.runners = ThreadPoolExecutor(self.streams, thread_name_prefix="tvclean-infer")
        # Input batches are decoded in place into reused buffers: a fresh 600 kB array per
        # image (and a np.stack per batch) cost more in page faults than the normalising.
        self._buffers: queue.SimpleQueue = queue.SimpleQueue()
        self._pillow_blocks = _cache_pillow_blocks(self.streams + PREFETCH_BATCHES)

    def __enter__(self) -> FeatureExtractor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.decoders.shutdown(wait=True, cancel_futures=True)
        self.runners.shutdown(wait=True, cancel_futures=True)
        if self._pillow_blocks is not None:
            _restore_pillow_blocks(self._pillow_blocks)
            self._pillow_blocks = None

    def features(self, images: np.ndarray) -> np.ndarray:
        """(n, 3, S, S) float32 preprocessed images -> (n, D) float32 features.

        The batch is split over the inference streams, so a caller with its own
        loop still uses every inference thread (do not call it from a stream).
        """
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = np.array_split(images, min(self.streams, len(images)))
        return np.concatenate(list(self.runners.map(self.features_in_this_thread, chunks)))

    def features_in_this_thread(self, images: np.ndarray) -> np.ndarray:
        """Like features(), as one onnxruntime call on the calling thread (one stream)."""
        out = self.session.run([self.output_name], {self.input_name: images})[0]
        return out.reshape(len(images), -1).astype(np.float32, copy=False)

    def run_batches(self, batches: Iterable[Sequence[str]]
                    ) -> Iterator[tuple[np.ndarray, dict[int, str]]]:
        """For each batch of image paths, in order: (b, D) features and {index: error}.

        Rows of images that failed to decode are zero. Keeps every inference
        stream busy plus PREFETCH_BATCHES batches decoding ahead.
        """
        batches = iter(batches)
        ahead = self.streams + PREFETCH_BATCHES
        pending = deque(self._submit(paths) for paths in islice(batches, ahead))
        while pending:
            result = pending.popleft()
            following = next(batches, None)
            if following is not None:
                pending.append(self._submit(following))
            yield result.result()

    def _submit(self, paths: Sequence[str]) -> Future[tuple[np.ndarray, dict[int, str]]]:
        prep, limit = self.model.preprocess, self.max_pixels
        batch = self._buffer()[:len(paths)]
        decoding = [self.decoders.submit(load_image, path, prep, limit, slot)
                    for path, slot in zip(paths, batch)]
        return self.runners.submit(self._run_batch, batch, decoding)

    def _buffer(self) -> np.ndarray:
        """A (batch_size, 3, S, S) float32 input buffer: a returned one, or a new one."""
        try:
            return self._buffers.get_nowait()
        except queue.Empty:
            size = self.model.preprocess.size
            return np.empty((self.batch_size, 3, size, size), dtype=np.float32)

    def _run_batch(self, batch: np.ndarray, decoding: list[Future[np.ndarray | str]]
                   ) -> tuple[np.ndarray, dict[int, str]]:
        decoded = [future.result() for future in decoding]  # raises only when shutting down
        errors = {i: r for i, r in enumerate(decoded) if isinstance(r, str)}
        features = np.zeros((len(decoded), self.dim), dtype=np.float32)
        try:
            if not errors:
                features[:] = self.features_in_this_thread(batch)
            elif len(errors) < len(decoded):
                good = [i for i in range(len(decoded)) if i not in errors]
                features[good] = self.features_in_this_thread(batch[good])
        finally:  # every decoder of this batch is done with it: it can be reused
            self._buffers.put(batch.base)
        return features, errors

    def _probe_dim(self) -> int:
        size = self.model.preprocess.size
        try:
            out = self.session.run([self.output_name], {
                self.input_name: np.zeros((1, 3, size, size), dtype=np.float32)})[0]
        except Exception as exc:  # onnxruntime raises its own exception types
            raise TvcleanError(f"model {self.model.path} does not accept (1, 3, {size}, {size}) "
                               f"float32 input: {one_line(exc)}") from None
        if out.ndim < 2 or out.shape[0] != 1 or int(np.prod(out.shape[2:])) != 1:
            raise TvcleanError(f"model {self.model.path}: output {self.output_name!r} has shape "
                               f"{list(out.shape)} for one image; expected (N, D) features")
        return int(out.shape[1])


def decode_workers_for(device: str, threads: int, cores: int) -> int:
    """Decoding threads when --decode-workers is 0.

    On a GPU every core decodes (decoding is then the CPU's only work). On the
    CPU with --threads 0 inference and decoding share every core: one decoder
    per core, kept from running ahead by the PREFETCH_BATCHES bound, so the
    cores go to whichever side has work. With --threads N the other cores decode.
    """
    if device == "cuda" or threads == 0:
        return cores
    return max(1, cores - threads)


def _cache_pillow_blocks(blocks: int) -> int | None:
    """Let Pillow keep `blocks` freed image blocks for reuse (its default keeps none, so every
    decoded photo is a fresh allocation with its page faults); returns the old setting."""
    from PIL import Image
    try:
        before = Image.core.get_blocks_max()
        Image.core.set_blocks_max(max(before, blocks))
    except (AttributeError, ValueError):  # another Pillow build
        return None
    return before


def _restore_pillow_blocks(before: int) -> None:
    from PIL import Image
    Image.core.set_blocks_max(before)


def _open_session(model: ModelSpec, threads: int, providers: list[str],
                  device: str = "cpu") -> ort.InferenceSession:
    """A session on `providers` whose every CPU run uses `threads` onnxruntime threads
    (1: the caller's own). If the GPU provider fails to load the model, `auto` falls back
    to the CPU and `cuda` is an error."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning worker threads would steal the cores the decoders need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(model.path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        failure = one_line(exc)
    if len(providers) > 1:  # e.g. onnxruntime-gpu without the CUDA libraries
        try:
            fallback = ort.InferenceSession(str(model.path), options, providers=providers[-1:])
        except Exception:
            pass
        else:
            if device != "cuda":
                return fallback
            raise TvcleanError(f"--device cuda: model {model.path} does not load on "
                               f"{providers[0]} ({failure}); use --device cpu or auto")
    raise TvcleanError(f"cannot load model {model.path}: {failure}")


def _io_names(session: ort.InferenceSession, model: ModelSpec) -> tuple[str, str]:
    """The input and features-output names, per the model contract."""
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    input_name = model.input or inputs[0]
    output_name = model.output or ("features" if "features" in outputs else outputs[0])
    if input_name not in inputs:
        raise TvcleanError(f"model {model.path} has no input {input_name!r} (inputs: {inputs})")
    if output_name not in outputs:
        raise TvcleanError(f"model {model.path} has no output {output_name!r} (outputs: {outputs})")
    return input_name, output_name
