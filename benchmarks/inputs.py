"""The digits a benchmark sends: real MNIST digits from the default run's held-out test split (never trained on)."""
from __future__ import annotations

import io

import numpy as np


def sample_inputs(count: int) -> tuple[bytes, bytes, list[int], list[tuple[bytes, int]]]:
    """(one 28x28 PNG of a real MNIST digit, a .npy of `count` real digits, their labels, and one PNG of each digit
    0-9 with its label), from the default training run's held-out test split: digits the model never trained on."""
    from PIL import Image

    from data import default_test_split

    images, labels = default_test_split()
    def png_of(pixels: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return buffer.getvalue()

    npy = io.BytesIO()
    np.save(npy, images[:count], allow_pickle=False)
    per_digit = [(png_of(images[index]), int(labels[index])) for digit in range(10)
                 for index in np.flatnonzero(labels == digit)[:5]]  # five candidates per digit
    return png_of(images[0]), npy.getvalue(), [int(label) for label in labels[:count]], per_digit


def answered_right(url: str, token: str, candidates: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
    """One PNG per digit that the server classifies as its true label (the soak then checks every answer against
    it: a wrong one is a mix-up or a fault under load, not the model's error on a hard digit)."""
    import requests

    chosen = {}
    for data, label in candidates:
        if label not in chosen:
            answer = requests.post(url, data=data, timeout=30,
                                   headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"})
            if answer.status_code == 200 and answer.json()["label"] == str(label):
                chosen[label] = (data, label)
    return sorted(chosen.values(), key=lambda pair: pair[1])
