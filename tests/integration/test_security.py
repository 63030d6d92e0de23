"""Secure defaults against a real TorchServe (issue #5 grows this file)."""
from __future__ import annotations

import zipfile

import pytest

from scripts.local_server import start_server

pytestmark = pytest.mark.integration


def test_an_archive_with_tampered_weights_never_serves(model_store, workdir_factory, tmp_path):
    """Weights changed after packaging: every worker refuses them before torch.load and says why."""
    store = tmp_path / "store"
    store.mkdir()
    with zipfile.ZipFile(model_store / "digits.mar") as original, \
            zipfile.ZipFile(store / "digits.mar", "w", zipfile.ZIP_STORED) as tampered:
        for item in original.infolist():
            data = original.read(item)
            if item.filename == "digit_cnn.pt":
                data = data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:]
            tampered.writestr(item, data)
    with pytest.raises(RuntimeError) as refused:
        start_server(store, workdir_factory(), "digits.mar", timeout=25)
    message = str(refused.value)
    assert "did not become ready" in message
    assert "refusing to load digit_cnn.pt: SHA-256" in message and "tampered or corrupted weights" in message
