"""Stage `train`: fit the patch CNN on the training videos' candidates.

CPU by default, CUDA when present; seeded and deterministic on CPU, the same bytes whatever the
machine's core count or OMP_NUM_THREADS. Under `torchrun` (or Azure ML's PyTorch distribution:
WORLD_SIZE > 1) each process trains on its share of every batch with DDP (gloo on CPU, NCCL on
GPU), and rank 0 alone writes the model.

    python -m badpixels.train data/processed/features models/model.pt
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import distributed, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from badpixels.features import read_rule
from badpixels.model import PixelNet, save_model
from badpixels.stage import StageError, atomic_output, load_params, param, reading, run


@dataclass(frozen=True)
class TrainParams:
    epochs: int = param(at_least=1)
    batch_size: int = param(at_least=1)  # and at most the training samples: see main
    learning_rate: float = param(above=0)
    width: int = param(at_least=1, at_most=1024)  # 3 width² weights in the second conv
    seed: int = param(at_least=0, below=2**32)


@dataclass(frozen=True)
class Workers:
    """This process among the distributed ones; rank 0 of 1 when run alone."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0


def join_workers() -> Workers:
    """Join the process group when torchrun (or Azure ML) started several processes."""
    size = _env_count("WORLD_SIZE", 1)
    if size == 1:
        return Workers()
    local_rank = _env_count("LOCAL_RANK", 0)
    distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Workers(distributed.get_rank(), size, local_rank)


def _env_count(name: str, default: int) -> int:
    """A whole number >= `default` from the environment, which torchrun sets."""
    text = os.environ.get(name, str(default))
    if not text.isascii() or not text.isdigit() or int(text) < default:
        raise StageError(
            f"${name}={text!r} is not a whole number >= {default}; unset it to train in one "
            "process, or start the stage with torchrun"
        )
    return int(text)


CHUNK_VIDEOS = 8  # videos read at once: bounds memory; part of the shuffling, so of the result
CPU_THREADS = 1  # intra-op threads of CPU training, whatever the machine: part of the result


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Run torch's CPU ops on `count` threads for the duration, then restore the caller's count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def feature_files(folder: Path) -> list[Path]:
    """The feature files of one split, sorted."""
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise StageError(f"{folder}: no feature files; run `dvc repro features` first")
    return files


def sample_count(files: list[Path]) -> int:
    """The samples (candidate pixels) in feature files, reading only their labels."""
    total = 0
    for file in files:
        with reading(file, "features"), np.load(file) as video:
            total += len(video["labels"])
    return total


def check_against_data(params: TrainParams, samples: int) -> None:
    """Batches are whole (the remainder is dropped): a larger batch would never train."""
    if params.batch_size > samples:
        raise StageError(
            f"params.yaml: 'train.batch_size' is {params.batch_size}, more than the {samples} "
            "training samples, so no step would run; lower it in params.yaml"
        )


def check_finite(net: nn.Module, params: TrainParams) -> None:
    """A diverged training leaves NaN or infinite weights: refuse to save that model."""
    if not all(torch.isfinite(weights).all() for weights in net.parameters()):
        raise StageError(
            "training diverged (NaN or infinite weights) with 'train.learning_rate' "
            f"{params.learning_rate}; lower it in params.yaml"
        )


def read_chunk(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches and labels of some videos, concatenated."""
    patches, labels = [], []
    for file in files:
        with reading(file, "features"), np.load(file) as video:
            patches.append(video["patches"])
            labels.append(video["labels"].astype(np.int64))
    return torch.from_numpy(np.concatenate(patches)), torch.from_numpy(np.concatenate(labels))


def batches(
    files: list[Path], size: int, order: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled batches of exactly `size`, reading CHUNK_VIDEOS videos at a time.

    Videos come in random order and samples are shuffled within what is in memory; the
    remainder under `size` is dropped. Memory and batch shapes stay the same at any scale.
    """
    shuffled = [files[i] for i in torch.randperm(len(files), generator=order).tolist()]
    left: tuple[torch.Tensor, torch.Tensor] | None = None
    for start in range(0, len(shuffled), CHUNK_VIDEOS):
        x, y = read_chunk(shuffled[start : start + CHUNK_VIDEOS])
        if left is not None:
            x, y = torch.cat([left[0], x]), torch.cat([left[1], y])
        mixed = torch.randperm(len(y), generator=order)
        full = len(y) - len(y) % size
        for batch in mixed[:full].split(size):
            yield x[batch], y[batch]
        left = x[mixed[full:]], y[mixed[full:]]


def train(
    files: list[Path], params: TrainParams, patch: int, workers: Workers = Workers()
) -> PixelNet:
    """Fit a PixelNet with Adam and cross-entropy on feature files; pure but for the progress.

    With several workers each takes every `size`-th sample of each batch; DDP averages their
    gradients, so batches and steps stay those of a single process.

    On the CPU it runs on CPU_THREADS intra-op threads, the caller's count restored on return:
    oneDNN splits the conv weight and bias gradients' sums over the batch across threads, so
    another count rounds them otherwise and changes the model's bytes. The net is small: a
    second thread saves about a fifth of the stage on two idle cores, and makes it several
    times slower when the cores are busy.
    """
    torch.manual_seed(params.seed)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", workers.local_rank) if cuda else torch.device("cpu")
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    with intra_op_threads(CPU_THREADS) if device.type == "cpu" else nullcontext():
        net = PixelNet(patch, params.width).to(device)
        ddp = DistributedDataParallel(net, [device] if cuda else None) if workers.size > 1 else None
        optimiser = torch.optim.Adam(net.parameters(), lr=params.learning_rate)
        loss_fn = nn.CrossEntropyLoss()
        order = torch.Generator().manual_seed(params.seed)
        quiet = None if workers.rank == 0 else True
        for _ in tqdm(range(params.epochs), desc="train", disable=quiet):
            for x, y in batches(files, params.batch_size, order):
                optimiser.zero_grad()
                if ddp is None:
                    loss = loss_fn(net(x.to(device)), y.to(device))
                else:  # summed over this share, scaled so the mean over workers is the batch mean
                    share = slice(workers.rank, None, workers.size)
                    logits = ddp(x[share].to(device))
                    loss = nn.functional.cross_entropy(logits, y[share].to(device), reduction="sum")
                    loss = loss * (workers.size / len(y))
                loss.backward()
                optimiser.step()
    return net.cpu().eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m badpixels.train", description=__doc__)
    parser.add_argument("features", type=Path, help="features folder (uses its train/)")
    parser.add_argument("model", type=Path, help="model file to write")
    args = parser.parse_args(argv)
    params = load_params(TrainParams, "train")
    files = feature_files(args.features / "train")
    rule = read_rule(args.features)
    check_against_data(params, sample_count(files))
    workers = join_workers()
    try:
        net = train(files, params, rule.patch, workers)
    finally:
        if workers.size > 1:
            distributed.destroy_process_group()
    check_finite(net, params)
    if workers.rank == 0:
        with atomic_output(args.model) as tmp:
            save_model(tmp, net, rule)


if __name__ == "__main__":
    run(main)
