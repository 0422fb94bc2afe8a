"""The harness kit: what a task's `prepare.py` builds on.

A task's harness writes three things: its data (`build`, deterministic), the shape of its model's
input, and `evaluate(model, data) -> metrics`. The kit does the rest of the contract with the
engine (README, "Writing a task"):

- `SEED` and `TIME_BUDGET`, as the engine hands them to train.py;
- the data cache: built once per machine under `AUTORESEARCH_CACHE`, read by train.py through
  `Harness.split`, fingerprinted, and checked at scoring time against data built afresh (a cache
  a candidate rewrote is repaired, and its model refused);
- `report(step, loss)`: the progress file the engine reads while train.py trains;
- `Harness.hand_over(model)`: the model exported with `torch.export` for the scoring process;
- `Harness.main()`: `python prepare.py evaluate MODEL` loads the exported program (the
  candidate's code never runs there), counts its parameters, checks it is causal where asked,
  scores it and prints the one JSON line the engine reads, with `valid` and, when false, a
  `reason`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

# The names of the variables the engine sets: of the engine, the kit loads no more than them.
from engine.experiment import environment

# Set by the engine for each experiment; the defaults let `python train.py` run by hand.
TIME_BUDGET = float(os.environ.get(environment.BUDGET_S, "300"))  # seconds of training
SEED = int(os.environ.get(environment.SEED, "0"))
_MODEL_OUT = os.environ.get(environment.MODEL_OUT, "model.pt2")
_PROGRESS_OUT = os.environ.get(environment.PROGRESS_OUT, "progress.jsonl")

Data = dict[str, torch.Tensor]  # split name -> tensor


def report(step: int, loss: float) -> None:
    """Record the training loss of a step: the engine reads it while train.py trains (its
    training-stability metric, and the live view)."""
    _append_progress({"step": step, "loss": loss, "time": time.time()})


def _append_progress(record: dict) -> None:
    with open(_PROGRESS_OUT, "a") as progress:
        progress.write(json.dumps(record) + "\n")


class Harness:
    """A task's fixed harness.

    `name` names the data's cache folder (change it when `build` changes). `build()` returns the
    task's data, the same on every call and every machine, as named tensors. `input_shape` and
    `input_dtype` are those of the exported model's one input. `evaluate(model, data, device)`
    scores the exported model on the data (built afresh) and returns its metrics as numbers.
    `causal_vocab_size`, for a sequence model over token ids, refuses a model whose outputs at a
    position change with later tokens.
    """

    def __init__(self, name: str, build: Callable[[], Data], input_shape: tuple[int, ...],
                 evaluate: Callable[[Callable, Data, str], dict[str, float]], *,
                 input_dtype: torch.dtype = torch.float32,
                 causal_vocab_size: int | None = None) -> None:
        self.name, self.build, self.score = name, build, evaluate
        self.input_shape, self.input_dtype = tuple(input_shape), input_dtype
        self.causal_vocab_size = causal_vocab_size

    # -- data ------------------------------------------------------------------------------

    def cache_dir(self) -> Path:
        """Where this machine keeps the data (`AUTORESEARCH_CACHE` overrides the default)."""
        base = os.environ.get(environment.CACHE) or Path.home() / ".cache" / "autoresearch"
        return Path(base) / "kit" / self.name

    def prepare(self) -> dict:
        """Build the cache if this machine has none yet; return its summary."""
        folder = self.cache_dir()
        if (folder / "summary.json").exists():
            return json.loads((folder / "summary.json").read_text())
        files = _cache_files(self.build())
        # Several experiments may start on a fresh machine at once: build aside, then rename.
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        staging.mkdir(exist_ok=True)
        for name, data in files.items():
            (staging / name).write_bytes(data)
        try:
            staging.rename(folder)
        except OSError:  # another process won the race; its copy is identical
            for child in staging.iterdir():
                child.unlink()
            staging.rmdir()
        return json.loads(files["summary.json"])

    def split(self, name: str) -> torch.Tensor:
        """One split of the data, from this machine's cache (what train.py reads)."""
        summary = self.prepare()["splits"][name]
        raw = bytearray((self.cache_dir() / f"{name}.bin").read_bytes())
        return torch.frombuffer(raw, dtype=getattr(torch, summary["dtype"])).view(summary["shape"])

    def _repair_cache(self, data: Data) -> bool:
        """Whether the cache, where there is one, still holds `data`; a cache that does not (a
        candidate rewrote or deleted part of it) is rewritten file by file, each replaced whole,
        so that later experiments train on the true data again."""
        folder = self.cache_dir()
        if not folder.is_dir():
            return True
        files = _cache_files(data)
        changed = [name for name, content in files.items()
                   if not (folder / name).is_file() or (folder / name).read_bytes() != content]
        for name in changed:
            staging = folder / f".{name}.{os.getpid()}.tmp"
            staging.write_bytes(files[name])
            staging.replace(folder / name)
        return not changed

    # -- hand-over: what train.py calls ----------------------------------------------------

    def hand_over(self, model: torch.nn.Module) -> None:
        """Export the trained model as a self-contained program for the scoring process."""
        started = time.perf_counter()
        model.eval()
        device = next(model.parameters()).device
        example = torch.zeros(self.input_shape, dtype=self.input_dtype, device=device)
        if device.type == "cuda":
            _append_progress({"peak_cuda_memory_gb": torch.cuda.max_memory_allocated() / 2**30})
        try:
            exported = torch.export.export(model, (example,))
        except Exception as error:
            raise RuntimeError(
                f"torch.export could not export the model ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}); see the README, "
                "'When a model cannot be exported'") from error
        torch.export.save(exported, _MODEL_OUT)
        _append_progress({"export_s": time.perf_counter() - started})

    # -- scoring: `python prepare.py evaluate MODEL`, in a process of its own --------------

    def evaluate(self, model_path: str) -> dict:
        """Score an exported model: the JSON object the engine reads."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        exported = torch.export.load(model_path)
        model = exported.module().to(device)
        params = _count_parameters(exported)
        if self.causal_vocab_size and not self._is_causal(model, device):
            return {"valid": False, "reason": "the model looks at future tokens", "params": params}
        # Scored on data built afresh, not on the cache train.py read (and could rewrite). The
        # fingerprint lets the engine compare the data across experiments and machines.
        data = self.build()
        intact = self._repair_cache(data)
        with torch.no_grad():
            metrics = self.score(model, data, device)
        result = {"valid": True, **metrics, "params": params, "eval_device": device,
                  "data_fingerprint": _fingerprint(data)}
        if not all(math.isfinite(v) for v in metrics.values() if isinstance(v, (int, float))):
            result.update(valid=False, reason="the model's predictions are not finite")
        elif not intact:
            result.update(valid=False, reason="the task's data changed during the experiment "
                                              "(its cache was rebuilt)")
        return result

    def _is_causal(self, model: Callable, device: str) -> bool:
        """Changing the second half of a window must leave the outputs of the first half as they
        are: a prediction may depend only on earlier tokens."""
        generator = torch.Generator().manual_seed(1234)
        tokens = torch.randint(self.causal_vocab_size, self.input_shape, generator=generator)
        changed = tokens.clone()
        half = self.input_shape[1] // 2
        changed[:, half:] = torch.randint(self.causal_vocab_size, changed[:, half:].shape,
                                          generator=generator)
        with torch.no_grad():
            first = model(tokens.to(device))[:, :half].float()
            second = model(changed.to(device))[:, :half].float()
        return torch.allclose(first, second, rtol=1e-3, atol=1e-3)

    def main(self, argv: list[str] | None = None) -> None:
        """The harness's command line: `evaluate MODEL` prints the score as one JSON line;
        no arguments build the data cache and print its summary."""
        argv = sys.argv[1:] if argv is None else argv
        if len(argv) == 2 and argv[0] == "evaluate":
            print(json.dumps(self.evaluate(argv[1])))
        elif not argv:
            print(json.dumps(self.prepare()))
        else:
            sys.exit("usage: python prepare.py [evaluate MODEL]")


def _cache_files(data: Data) -> dict[str, bytes]:
    """The cache's files: each split's raw bytes, and a summary of their types and shapes."""
    files = {f"{name}.bin": tensor.contiguous().numpy().tobytes() for name, tensor in data.items()}
    summary = {"fingerprint": _fingerprint(data),
               "splits": {name: {"dtype": str(tensor.dtype).removeprefix("torch."),
                                 "shape": list(tensor.shape)} for name, tensor in data.items()}}
    return {**files, "summary.json": json.dumps(summary).encode()}


def _fingerprint(data: Data) -> str:
    """The data's identity: a hash of the splits' bytes in the order of their names."""
    digest = hashlib.sha256()
    for name in sorted(data):
        digest.update(data[name].contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _count_parameters(exported: torch.export.ExportedProgram) -> int:
    """Distinct parameters of the program (tied weights count once)."""
    state = exported.state_dict
    seen, total = set(), 0
    for name in exported.graph_signature.parameters:
        tensor = state[name]
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape)
        if key not in seen:
            seen.add(key)
            total += tensor.numel()
    return total
