"""The variables the runner sets for train.py, by name: the runner (engine/experiment/runner.py)
writes them and the harness kit (autoresearch/kit.py) reads them, in train.py and in the scoring
process. A module that imports nothing, so that the kit reads the names without loading the
engine; docs/writing-a-task.md lists them for a harness written without the kit.
"""

PREFIX = "AUTORESEARCH_"  # of them all: of its own such variables, the runner passes on CACHE only
BUDGET_S = "AUTORESEARCH_BUDGET_S"  # seconds of training
SEED = "AUTORESEARCH_SEED"  # the seed the engine chose for the experiment
MODEL_OUT = "AUTORESEARCH_MODEL_OUT"  # where train.py hands over its exported model
PROGRESS_OUT = "AUTORESEARCH_PROGRESS_OUT"  # the progress file train.py appends steps to
CACHE = "AUTORESEARCH_CACHE"  # where the task's data is cached, set by the user (or a test)
