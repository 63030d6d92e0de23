"""The raw in-process ceiling: the worker's model, batched forward, no server; and the handler's preprocessing cost."""
from __future__ import annotations

import multiprocessing
import statistics
import time
from pathlib import Path

RAW_BATCH = 64  # batch size of the raw in-process ceiling


def _raw_worker(weights: str, threads: int, seconds: float, batch: int, queue) -> None:
    import torch

    from handler.predictor import forward, optimize_for_cpu
    from model.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    model = optimize_for_cpu(load_checkpoint(weights, torch.device("cpu"))[0])
    inputs = torch.randn(batch, 1, 28, 28)
    forward(model, inputs)
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        forward(model, inputs)
        count += batch
    queue.put(count / seconds)


def raw_throughput(weights: Path, processes: int, threads: int, seconds: float, batch: int = RAW_BATCH) -> float:
    """Images/s of the batched forward pass, `processes` at once (as TorchServe's workers run), summed."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_raw_worker, args=(str(weights), threads, seconds, batch, queue))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    rates = [queue.get(timeout=seconds + 120) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(rates)


def preprocessing_cost(png: bytes, npy: bytes, resolution: int, repeat: int) -> dict:
    """Median microseconds per image for the worker's input path (handler/wire.py's read, then the predictor's
    preprocess): PNG bytes alone (a lone request), 16 PNG requests preprocessed together (a full TorchServe batch),
    and .npy frames."""
    import torch

    from handler import wire
    from handler.predictor import Limits, preprocess

    def read(body: bytes):
        return wire.read({"body": body}, limits).request

    torch.set_num_threads(1)
    limits = Limits(num_classes=10, topk=3, max_images=256)
    timings: dict[str, list[float]] = {"png_us": [], "png_batch16_us": [], "npy_frame_us": []}
    frames = len(read(npy).images)
    for _ in range(repeat):
        start = time.perf_counter()
        preprocess([read(png)], resolution)
        timings["png_us"].append(time.perf_counter() - start)
        start = time.perf_counter()
        preprocess([read(png) for _ in range(16)], resolution)
        timings["png_batch16_us"].append((time.perf_counter() - start) / 16)
        start = time.perf_counter()
        preprocess([read(npy)], resolution)
        timings["npy_frame_us"].append((time.perf_counter() - start) / frames)
    return {name: statistics.median(values) * 1e6 for name, values in timings.items()}


def weights_resolution(weights: Path) -> int:
    """The resolution the model in `weights` was trained at (model/checkpoint.py reads it)."""
    from model.checkpoint import load_checkpoint, training_resolution

    return training_resolution(load_checkpoint(weights)[2])
