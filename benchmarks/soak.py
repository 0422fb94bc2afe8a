"""Soak: a time-compressed search of thousands of null experiments, watching what grows.

The real driver (`Search`) with null experiments (null_experiment.py: each holds its logical GPU
for `--length` seconds and scores the code on a known landscape) and instant proposers that make a
real change half the time (a new learning rate, so that there are winners, confirmations and
promotions) and a new tag line otherwise, keeping train.py the same size. A night of real
5-minute experiments on 64 GPUs is about 6,000 experiments; this runs that many in minutes.

Printed every `--every` seconds: experiments finished, the driver's resident memory, and the size
of each part of the run dir (results/, repo.git, tune/ where winners' knobs are tuned,
population.json, results.tsv, journal.jsonl, driver.log with its rotated files). At the end:
growth per 1,000 experiments in the second half of the run against the first half. Durable
records (rows, commits, journal lines) grow linearly by design: the ratio stays near 1. What must
not grow is what the driver keeps in memory beyond its records, and the files it rewrites every
second or so (population.json, results.tsv): for those, growth per experiment is a cost paid
again on every rewrite.

    .venv/bin/python -m benchmarks.soak [--minutes 5] [--gpus 16] [--length 0.3] [--every 15]
                                        [--run-dir PATH]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import tempfile
import time
from pathlib import Path

import psutil
import ray

import benchmarks.null_experiment
from benchmarks.null_experiment import null_experiment
from engine.cluster import start_ray
from engine.driver import Search, SearchOptions
from engine.experiment.task import load_task, template_path
from engine.protocol import Proposal, ProposalContext
from engine.rundir.layout import RunDir

PARTS = ("results", "repo.git", "tune", "population.json", "results.tsv", "journal.jsonl",
         "driver.log")
FOLDERS = ("results", "repo.git", "tune")  # shown with their file counts
# The results store writes a part per row and merges every 256 into one: the merged parts are what
# lasts, the single-row parts a sawtooth of at most 256 files that would blur the growth.
_MERGED_PART = re.compile(r"part-(\d+)-(?!\1\.)(\d+)\.parquet")
_TAG = re.compile(r"\nVARIANT = .*\n")
_RATE = re.compile(r"^LEARNING_RATE = (\S+)", re.M)


class SoakAgent:
    """Proposes at once: half the time a new learning rate, otherwise only a new tag line."""

    name = "soak"

    def __init__(self, seed: int) -> None:
        self.made = 0
        self.rng = random.Random(seed)

    def propose(self, context: ProposalContext) -> Proposal:
        self.made += 1
        train = _TAG.sub("\n", context.files["train.py"]).rstrip("\n")
        train += f'\nVARIANT = "{context.island}-{self.made}"\n'
        if self.rng.random() < 0.5:
            rate = float(_RATE.search(train)[1]) * self.rng.uniform(0.8, 1.25)
            train = _RATE.sub(f"LEARNING_RATE = {rate:.6g}", train)
            return Proposal(f"learning rate {rate:.6g}", {"train.py": train})
        return Proposal(f"variant {self.made}", {"train.py": train})


def part_size(path: Path) -> tuple[int, int]:
    """Bytes and files under `path` (a file, or a folder walked whole); rotated logs
    (`driver.log.1`, ...) count with their file."""
    paths = [path, *path.parent.glob(path.name + ".*")] if path.suffix == ".log" else [path]
    size = files = 0
    for root in paths:
        if root.is_file():
            size, files = size + root.stat().st_size, files + 1
        for folder, _, names in os.walk(root) if root.is_dir() else ():
            for name in names:
                try:
                    size += os.stat(os.path.join(folder, name)).st_size
                except FileNotFoundError:  # git's temporary object, renamed as we looked
                    continue
                files += 1
    return size, files


class Watcher:
    """Samples the driver and the run dir every `every_s` seconds, from the driver's loop."""

    def __init__(self, search: Search, every_s: float) -> None:
        self.search, self.every_s = search, every_s
        self.samples: list[dict] = []
        self.started = self.last = time.monotonic()
        self.driver = psutil.Process()

    def tick(self) -> None:
        if time.monotonic() - self.last >= self.every_s:
            self.sample()

    def sample(self) -> None:
        self.last = time.monotonic()
        row = {"elapsed": self.last - self.started, "experiments": len(self.search.store),
               "rss": self.driver.memory_info().rss}
        for part in PARTS:
            row[part], row[part + " files"] = part_size(self.search.run_dir / part)
        row["results merged"] = sum(path.stat().st_size for path in
                                    (self.search.run_dir / "results").iterdir()
                                    if _MERGED_PART.fullmatch(path.name))
        self.samples.append(row)
        print(_line(row), flush=True)


def _line(row: dict) -> str:
    cells = [f"{row['elapsed']:>7.0f}", f"{row['experiments']:>11}", f"{row['rss'] / 2**20:>8.1f}"]
    for part in PARTS:
        files = f" ({row[part + ' files']})" if part in FOLDERS else ""
        cells.append(f"{row[part] / 2**10:>14.1f}{files}")
    return " ".join(cells)


def growth(samples: list[dict]) -> list[tuple[str, float, float]]:
    """(name, growth per 1,000 experiments over the first half, over the second half) of the
    driver's memory (MB) and each part of the run dir (KB, and files for the folders)."""
    first, last = samples[0], samples[-1]
    middle = min(samples, key=lambda s: abs(s["experiments"] - (first["experiments"]
                                                                + last["experiments"]) / 2))
    rows = []
    names = [("rss", 2**20), ("results merged", 2**10),
             *((part, 2**10) for part in PARTS if part != "results"),
             *((folder + " files", 1) for folder in FOLDERS if folder != "results")]
    for name, unit in names:
        halves = []
        for a, b in ((first, middle), (middle, last)):
            halves.append(1000 * (b[name] - a[name]) / unit / max(b["experiments"]
                                                                   - a["experiments"], 1))
        rows.append((name, *halves))
    return rows


def soak(minutes: float, gpus: int, length: float, every_s: float, islands: int,
         keep: Path | None) -> None:
    start_ray(None, gpus, cpus=2)
    ray.cloudpickle.register_pickle_by_value(benchmarks.null_experiment)
    try:
        with tempfile.TemporaryDirectory() as folder:
            run_dir = keep or Path(folder) / "soak"
            options = SearchOptions(agents=islands, budget_s=length, hours=minutes / 60,
                                    surplus=max(4, gpus // 4))
            search = Search(load_task(template_path()), run_dir, options,
                            [SoakAgent(k) for k in range(islands)], run=null_experiment)
            RunDir(run_dir).log_to(console=False)
            watcher = Watcher(search, every_s)
            print(f"{minutes:g} minutes of null experiments of {length:g} s on {gpus} logical "
                  f"GPUs, {islands} islands; sizes in KB (files)")
            print(f"{'s':>7} {'experiments':>11} {'RSS MB':>8} " + " ".join(
                f"{part:>14}" for part in PARTS))
            watcher.sample()
            state = search.run(on_tick=watcher.tick)
            watcher.sample()
            print(f"\n{len(search.store)} experiments, {state.by_status}, "
                  f"{len(search.population.promotions)} promotions, "
                  f"driver {1000 * state.driver_s / max(len(search.store), 1):.1f} ms/exp")
            print("\ngrowth per 1,000 experiments (MB of RSS, KB of files, or files):")
            print(f"{'':>16} {'first half':>11} {'second half':>12} {'ratio':>6}")
            for name, before, after in growth(watcher.samples[1:]):
                ratio = f"{after / before:>6.2f}" if abs(before) > 1e-9 else f"{'-':>6}"
                print(f"{name:>16} {before:>11.2f} {after:>12.2f} {ratio}")
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--gpus", type=int, default=16)
    parser.add_argument("--length", type=float, default=0.3, help="seconds per experiment")
    parser.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    parser.add_argument("--islands", type=int, default=8)
    parser.add_argument("--run-dir", type=Path, help="keep the run dir here (default: deleted)")
    args = parser.parse_args()
    soak(args.minutes, args.gpus, args.length, args.every, args.islands, args.run_dir)


if __name__ == "__main__":
    main()
