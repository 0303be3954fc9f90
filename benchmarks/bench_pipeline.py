"""Pipeline figures: fresh-clone PR build, no-op and incremental repro, worker scaling, peak RSS.

    python benchmarks/bench_pipeline.py [--scale-factor 10]

Works on a fresh clone of this repository's HEAD in a temporary folder; prints one line a figure.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = {
    "validate": "{raw} data/interim/manifest.json",
    "frames": "{raw} data/interim/manifest.json data/interim/frames",
    "features": "data/interim/frames {raw}/labels.csv data/processed/features",
    "train": "data/processed/features models/model.pt",
    "evaluate": "models/model.pt data/processed/features data/interim/frames reports",
}


def timed(*args: str | Path, cwd: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB, largest process of the tree) of one command."""
    start = time.perf_counter()
    process = subprocess.Popen([str(a) for a in args], cwd=cwd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(map(str, args))}")
    return elapsed, usage.ru_maxrss // 1024


def set_param(project: Path, key: str, value: object) -> None:
    """Set `section.key` in params.yaml, keeping the file's comments."""
    section, name = key.split(".")
    params = project / "params.yaml"
    text = params.read_text()
    start = text.index(f"\n{section}:\n")
    head, body = text[:start], text[start:]
    params.write_text(head + re.sub(rf"(\n  {name}: )[^\s#]+", rf"\g<1>{value}", body, count=1))


def pr_build(work: Path) -> Path:
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    pull, _ = timed("dvc", "pull", "-q", "data.dvc", cwd=clone)
    repro, _ = timed("dvc", "repro", "-q", cwd=clone)
    print(f"fresh-clone PR build: dvc pull {pull:.1f} s + dvc repro {repro:.1f} s")
    noop, _ = timed("dvc", "repro", "-q", cwd=clone)
    print(f"no-op dvc repro: {noop:.2f} s (target <= 1.5 s)")
    set_param(clone, "train.epochs", 6)
    incremental, _ = timed("dvc", "repro", "-q", cwd=clone)
    print(f"incremental repro after train.epochs change (train + evaluate): {incremental:.1f} s")
    return clone


def stage_figures(project: Path, raw: str, label: str, workers: int = 2) -> dict[str, float]:
    """Run every stage once on `raw`; print and return the peak RSS of each."""
    for key in ("frames.workers", "features.workers"):
        set_param(project, key, workers)
    rss = {}
    for stage, args in STAGES.items():
        seconds, peak = timed(
            sys.executable, "-m", f"badpixels.{stage}", *args.format(raw=raw).split(), cwd=project
        )
        rss[stage] = peak
        print(f"{label}: {stage:<9} {seconds:6.1f} s  peak RSS {peak:5d} MiB")
    return rss


def scaling(project: Path, videos: int = 240) -> None:
    """Videos per second of frames and features with 1 and 2 workers, on full-size videos.

    Interpreter start-up and imports (timed alone) do not parallelise; the figures show the
    whole stage and its work without them.
    """
    raw = "data/raw/full-sample"
    synth = ["--scale", "full", "--videos", str(videos), "--out", raw]
    subprocess.run([sys.executable, "-m", "badpixels.synth", *synth], cwd=project, check=True)
    timed(
        sys.executable,
        "-m",
        "badpixels.validate",
        *STAGES["validate"].format(raw=raw).split(),
        cwd=project,
    )
    for name in ("frames", "features"):
        start, _ = timed(sys.executable, "-c", f"import badpixels.{name}", cwd=project)
        times = {}
        for workers in (1, 2):
            set_param(project, f"{name}.workers", workers)
            args = STAGES[name].format(raw=raw).split()
            times[workers], _ = timed(sys.executable, "-m", f"badpixels.{name}", *args, cwd=project)
        work = {w: t - start for w, t in times.items()}
        print(
            f"{name} ({videos} full-size videos): {videos / times[1]:.0f} videos/s with 1 worker, "
            f"{videos / times[2]:.0f} with 2: {times[1] / times[2]:.2f}x; without the "
            f"{start:.2f} s start-up: {work[1] / work[2]:.2f}x (target >= 1.8x)"
        )
    shutil.rmtree(project / raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale-factor", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        clone = pr_build(Path(tmp))
        set_param(clone, "train.epochs", 12)
        scaling(clone)
        toy = stage_figures(clone, "data/raw/toy", "toy")
        videos = 48 * args.scale_factor
        big = f"data/raw/x{args.scale_factor}"
        subprocess.run(
            [sys.executable, "-m", "badpixels.synth", "--videos", str(videos), "--out", big],
            cwd=clone,
            check=True,
        )
        large = stage_figures(clone, big, f"{args.scale_factor}x toy")
        for stage in STAGES:
            change = 100 * (large[stage] - toy[stage]) / toy[stage]
            print(f"peak RSS {stage}: {toy[stage]} -> {large[stage]} MiB ({change:+.0f}%)")
        shutil.rmtree(clone / big)


if __name__ == "__main__":
    main()
