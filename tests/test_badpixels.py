"""The example's pieces: deterministic data, lossless video, split by video, the detector."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from badpixels.features import (
    CLASSES,
    CandidateRule,
    extract_patches,
    find_candidates,
    split_videos,
)
from badpixels.model import Detector, PixelNet, predict_proba, save_model
from badpixels.synth import SCALES, make_video, write_dataset
from badpixels.train import TrainParams, batches, train
from badpixels.video import read_video, write_video

SMALL = replace(SCALES["toy"], videos=3)
RULE = CandidateRule(patch=5, residual_threshold=30.0, still_threshold=0.75)


def digest(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


def test_dataset_is_deterministic_per_seed(tmp_path: Path) -> None:
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        write_dataset(tmp_path / name, SMALL, seed)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_video_round_trip_is_bit_exact(tmp_path: Path) -> None:
    frames, _ = make_video(0, SMALL, seed=0)
    write_video(tmp_path / "v.mkv", frames)
    assert np.array_equal(read_video(tmp_path / "v.mkv"), frames)


def test_every_defect_is_a_candidate() -> None:
    for index in range(6):
        frames, defects = make_video(index, SMALL, seed=3)
        ys, xs = find_candidates(frames, RULE)
        candidates = set(zip(ys.tolist(), xs.tolist(), strict=True))
        assert {(y, x) for x, y, _ in defects} <= candidates
        assert len(candidates) < 0.3 * frames.shape[1] * frames.shape[2]


def test_patches_are_centred_and_reflected_at_edges() -> None:
    frames = np.arange(2 * 6 * 6, dtype=np.uint8).reshape(2, 6, 6)
    patches = extract_patches(frames, np.array([0, 3]), np.array([0, 2]), 3)
    assert patches.shape == (2, 2, 3, 3)
    assert np.array_equal(patches[1, :, 1, 1], frames[:, 3, 2])
    assert np.array_equal(patches[0, 0], frames[0, [1, 0, 1]][:, [1, 0, 1]])


def test_split_is_by_video_stable_and_seeded() -> None:
    ids = [f"vid{i:04d}" for i in range(40)]
    test = split_videos(ids, 0.25, seed=0)
    assert len(test) == 10 and test <= set(ids)
    assert split_videos(list(reversed(ids)), 0.25, seed=0) == test
    assert split_videos(ids, 0.25, seed=1) != test


def feature_files(folder: Path, videos: int) -> list[Path]:
    """Feature files as the features stage writes them, for `videos` fresh videos."""
    folder.mkdir()
    for index in range(videos):
        frames, defects = make_video(index, SMALL, seed=5)
        ys, xs = find_candidates(frames, RULE)
        truth = np.zeros(frames.shape[1:], np.int8)
        for x, y, kind in defects:
            truth[y, x] = CLASSES.index(kind)
        patches = extract_patches(frames, ys, xs, RULE.patch)
        np.savez(folder / f"v{index}.npz", patches=patches, labels=truth[ys, xs])
    return sorted(folder.glob("*.npz"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A briefly trained model and a video it has not seen."""
    files = feature_files(tmp_path_factory.mktemp("features") / "train", videos=4)
    params = TrainParams(epochs=2, batch_size=256, learning_rate=0.003, width=8, seed=0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(path, train(files, params, RULE.patch), RULE)
    return path, make_video(9, SMALL, seed=5)[0]


def test_batches_have_one_shape_and_cover_each_sample_once(tmp_path: Path) -> None:
    files = feature_files(tmp_path / "train", videos=10)  # more than one chunk of videos
    labels = [np.load(f)["labels"] for f in files]
    total = sum(len(y) for y in labels)
    seen = list(batches(files, 64, torch.Generator().manual_seed(0)))
    assert {x.shape[0] for x, _ in seen} == {64}
    assert len(seen) == total // 64  # only the remainder under one batch is dropped
    drawn = np.bincount(torch.cat([y for _, y in seen]).numpy(), minlength=len(CLASSES))
    available = np.bincount(np.concatenate(labels), minlength=len(CLASSES))
    assert (drawn <= available).all() and available.sum() - drawn.sum() < 64


def test_training_is_deterministic_whatever_the_thread_count(tmp_path: Path) -> None:
    """Three trainings, on 1, 2 and 4 threads, write the same bytes: a fresh clone's `dvc repro`
    on a 4-vCPU runner must match a lock made on a 2-core laptop."""
    files = feature_files(tmp_path / "train", videos=2)
    params = TrainParams(epochs=1, batch_size=128, learning_rate=0.003, width=8, seed=0)
    before = torch.get_num_threads()
    saved = {}
    try:
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            path = tmp_path / str(threads) / "model.pt"  # torch.save writes the name in the file
            path.parent.mkdir()
            save_model(path, train(files, params, RULE.patch), RULE)
            assert torch.get_num_threads() == threads  # train() puts the caller's count back
            saved[threads] = hashlib.sha256(path.read_bytes()).hexdigest()
    finally:
        torch.set_num_threads(before)
    assert saved[1] == saved[2] == saved[4]


def test_detector_carries_its_preprocessing(trained: tuple[Path, np.ndarray]) -> None:
    """Detector on raw frames equals the net on the patches the features stage would cut."""
    path, frames = trained
    detector = Detector(path)
    scores = detector.scores(frames)
    ys, xs = find_candidates(frames, RULE)
    expected = predict_proba(detector.net, extract_patches(frames, ys, xs, RULE.patch))
    assert np.allclose(scores[ys, xs], expected)
    assert detector.detect(frames).shape == frames.shape[1:]
    assert isinstance(detector.net, PixelNet) and detector.rule == RULE
