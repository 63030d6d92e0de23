"""serving/cli.py: the options every client shares, and the token they name."""
import argparse
import json

from serving.cli import add_client_arguments, client_token
from serving.config import Endpoints


def test_the_token_file_wins_over_torchserves_key_file(tmp_path):
    parser = argparse.ArgumentParser()
    add_client_arguments(parser)
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "torchserve-inference-key"}}))
    endpoints = Endpoints.from_config(key_file=key_file)
    assert client_token(parser.parse_args([]), endpoints) == "torchserve-inference-key"
    (tmp_path / "credential").write_text("the-gateways-credential\n")
    args = parser.parse_args(["--token-file", str(tmp_path / "credential")])
    assert client_token(args, endpoints) == "the-gateways-credential"
