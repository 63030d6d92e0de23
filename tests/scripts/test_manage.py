"""scripts/manage.py: arguments refused before any call."""
import argparse

import pytest

from scripts import manage


def test_scale_refuses_min_over_max_before_calling():
    class NoServer:
        def __getattr__(self, name):
            pytest.fail(f"{name} must not be called")

    args = argparse.Namespace(command="scale", min=3, max=1, model="digits", version=None, timeout=5, json=False)
    with pytest.raises(manage.ManagementError, match="--min 3 --max 1"):
        manage.run(NoServer(), args)
