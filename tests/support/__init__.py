"""What the tests share: servers, gateways, containers, the browser, bad inputs, images, the Debian packages a test
needs, the KServe client and the weight-dependent tolerances. Fixtures live in the conftest.py files and call these."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
