"""Prove that TorchServe's workers run the digit CNN on CUDA, on a machine with NVIDIA GPUs.

    scripts/gpu_check.sh              # on a CUDA machine: check; without one: say so and exit 0
    scripts/gpu_check.sh --cpu        # the same steps with CPU workers (a dry run of this check anywhere)
    scripts/gpu_check.sh --artifacts DIR   # train.py's output to package (default: artifacts/)
    scripts/gpu_check.sh --archive FILE    # the weights of a built .mar instead, with SAMPLES held-out digits
    scripts/gpu_check.sh --samples DIR     # labelled PNGs to send (NAME_label-N.png, as train.py writes them)
    # inside the container image, which carries the archive and its training run's samples but not data.py:
    scripts/gpu_check.sh --archive model_store/digits.mar --samples samples

What it does, in about a minute on a GPU machine: packages the weights (training first if there are none) with
handler/model-config.yaml plus `deviceType: gpu` and `deviceIds: [0..N-1]`, starts its own TorchServe (free ports,
own temp dir, token auth on; never touches a running one), then requires that
  1. describe reports deviceType gpu and "gpu": true for every worker,
  2. every worker's handler logged "digit model loaded on cuda:<id> by pid <its pid> (preprocessing on cuda:<id>",
     the device of a batch its preprocessing produced at start,
  3. nvidia-smi lists every worker's pid as a CUDA process,
  4. the sample digits are classified correctly over REST (at least 90%).
It stops the server it started and removes its temp dir. Exit 0: all held; 1: a check failed; 2: usage.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

from serving import archive as mar
from serving import launch
from serving.config import DEFAULT_MODEL, ROOT
from serving.management import api_for, describe_text
from serving.rest import classify

SAMPLES = 20  # held-out digits sent when checking a built archive
LOG_WAIT_SECONDS = 20
LOADED_LINE = r"digit model loaded on (\S*) by pid (\d+) \(preprocessing on ([^,]*)"


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def artifacts_from_archive(archive: Path, out: Path, draw_samples: bool) -> Path:
    """The archive's weights and labels, and if `draw_samples`, SAMPLES digits of the default run's held-out test split
    (data.py) as labelled PNGs (no training; data.py needs requirements.txt, which the image does not carry)."""
    from PIL import Image

    mar.extract(archive, out, [mar.weights_name(archive), "index_to_name.json"])
    if not draw_samples:
        return out
    try:
        from data import default_test_split
    except ImportError as error:
        raise ValueError(f"drawing held-out digits needs data.py and its requirements ({error}): "
                         "pass --samples DIR") from None
    (out / "samples").mkdir()
    images, labels = default_test_split()
    for index in range(SAMPLES):
        Image.fromarray(images[index]).save(out / "samples" / f"test{index:05d}_label-{labels[index]}.png")
    return out


def model_config(work: Path, device: str, gpus: int) -> Path:
    """The shipped handler/model-config.yaml plus where the workers go (one source of truth for the rest)."""
    text = (ROOT / "handler" / "model-config.yaml").read_text()
    if device == "gpu":
        ids = ",".join(str(index) for index in range(gpus))
        text += f"\n# Added by scripts/gpu_check.sh: every worker on a GPU, round-robin over these ids.\n" \
                f"deviceType: gpu\ndeviceIds: [{ids}]\n"
    else:
        text += "\ndeviceType: cpu\n"
    path = work / "model-config.yaml"
    path.write_text(text)
    return path


def loaded_lines(server: launch.Server, pids: list[int], expected: str) -> tuple[list[str], list[int]]:
    """The handler's "digit model loaded" lines and the worker pids without one on `expected`.

    Each worker logs the line before it reports READY, but it travels to model_log.log through the frontend's
    stdout reader and log4j2's async logger, so it can land after describe shows the worker READY: wait for one
    line per pid, with a deadline."""
    import time

    deadline = time.monotonic() + LOG_WAIT_SECONDS
    while True:
        text = server.log_texts().get("model_log.log", "")
        found = list(re.finditer(LOADED_LINE, text))
        on_device = {int(match.group(2)) for match in found
                     if match.group(1).startswith(expected) and match.group(3).startswith(expected)}
        missing = [pid for pid in pids if pid not in on_device]
        if not missing or time.monotonic() > deadline:
            return [match.group(0) for match in found], missing


def check(server: launch.Server, device: str, samples: list[Path]) -> int:
    failures = []

    def fail(message: str) -> None:
        print(f"gpu_check: FAIL: {message}", file=sys.stderr)
        failures.append(message)

    entry = api_for(server.endpoints).describe(DEFAULT_MODEL)[0]
    print(describe_text(entry, entry.get("modelVersion")))
    workers = entry["workers"]
    pids = [int(worker["pid"]) for worker in workers]
    if entry.get("deviceType") != device:
        fail(f"describe says deviceType {entry.get('deviceType')}, expected {device}")
    for worker in workers:
        if bool(worker.get("gpu")) != (device == "gpu"):
            fail(f"describe says worker {worker['pid']} has gpu={str(worker.get('gpu')).lower()}")
    ready = sum(worker["status"] == "READY" for worker in workers)
    if ready < entry["minWorkers"]:
        fail(f"describe shows {ready} READY workers, minWorkers is {entry['minWorkers']}")

    expected = "cuda:" if device == "gpu" else "cpu"
    lines, missing = loaded_lines(server, pids, expected)
    print(f"handler log: {len(pids) - len(missing)} of {len(pids)} workers loaded the model and preprocess on "
          f"{expected}*")
    print("\n".join(lines))
    if missing:
        fail(f"no 'digit model loaded on {expected}... (preprocessing on {expected}' line within "
             f"{LOG_WAIT_SECONDS} s from worker pid(s) {missing}")

    if device == "gpu":
        listed = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                                capture_output=True, text=True).stdout.split()
        print(f"nvidia-smi CUDA processes: {','.join(listed)}")
        for pid in pids:
            if str(pid) not in listed:
                fail(f"worker pid {pid} is not a CUDA process in nvidia-smi")

    url = f"{server.endpoints.inference}/predictions/{DEFAULT_MODEL}"
    with requests.Session() as session:
        answers = [(path, *classify(session, url, server.inference_token, path, 30)) for path in samples]
    right = sum(status == 200 and path.name.endswith(f"_label-{body['label']}.png") for path, status, body in answers)
    print(f"predictions: {right} of {len(answers)} sample digits right")
    if not answers or right * 10 < len(answers) * 9:
        fail(f"only {right} of {len(answers)} sample digits right: "
             + "; ".join(f"{path.name}: {status} {body}" for path, status, body in answers))

    if failures:
        print(f"gpu_check: {len(failures)} check(s) failed; the last lines of model_log.log:", file=sys.stderr)
        print("\n".join(server.log_texts().get("model_log.log", "").splitlines()[-20:]), file=sys.stderr)
        return 1
    print(f"gpu_check: OK: {len(pids)} workers on {entry.get('deviceType')}, every check passed.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="CPU workers: a dry run of every step")
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts", help="train.py's output to package")
    parser.add_argument("--archive", type=Path, default=None, help="the weights of a built .mar instead")
    parser.add_argument("--samples", type=Path, default=None,
                        help="labelled PNGs to send (default: the artifacts' samples/, or with --archive held-out "
                             "digits of the default run's test split)")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"gpu_check: unknown argument {unknown[0]}", file=sys.stderr)
        return 2
    device, gpus = "cpu" if args.cpu else "gpu", 0
    if device == "gpu":
        gpus = cuda_devices()
        if gpus == 0 or not shutil.which("nvidia-smi"):
            print(f"gpu_check: no CUDA GPU on this machine (torch.cuda.device_count() = {gpus}); "
                  "GPU workers not checked.")
            return 0
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                               capture_output=True, text=True).stdout.strip().replace("\n", ",")
        print(f"gpu_check: {gpus} CUDA GPU(s): {names}")

    work = Path(tempfile.mkdtemp(prefix="ts-gpu-check-", dir="/tmp"))  # short: worker sockets live in its tmp/
    server = None
    try:
        artifacts = args.artifacts
        if args.archive:
            try:
                artifacts = artifacts_from_archive(args.archive, work / "artifacts", args.samples is None)
            except (OSError, KeyError, ValueError) as error:
                print(f"gpu_check: cannot read {args.archive}: {error}", file=sys.stderr)
                return 1
        if not (artifacts / "digit_cnn.pt").is_file():
            subprocess.run([sys.executable, str(ROOT / "train.py"), "--output-dir", str(artifacts)], check=True)
        mar.package(artifacts, work / "store", DEFAULT_MODEL, model_config(work, device, gpus))
        extra_env = {"TS_NUMBER_OF_GPU": str(gpus)} if device == "gpu" else {}
        try:
            server = launch.start(work / "store", work, "digits.mar", timeout=240, extra_env=extra_env)
        except RuntimeError as error:
            print(f"gpu_check: TorchServe did not get the model ready: {error}", file=sys.stderr)
            return 1
        return check(server, device, sorted((args.samples or artifacts / "samples").glob("*.png")))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
