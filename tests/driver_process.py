"""A search driver in a process of its own, for tests that kill it at random moments.

    python tests/driver_process.py RUN_DIR RAY_ADDRESS new|resume

It joins the Ray cluster at RAY_ADDRESS and runs (or resumes) a search of null experiments;
exit status 3 means the run was already finished.
"""

import sys
from pathlib import Path

import ray

import benchmarks.null_experiment
from agents import make_agents
from benchmarks.null_experiment import null_experiment
from engine.cluster import start_ray
from engine.driver import Search, SearchOptions
from engine.experiment.task import load_task, template_path
from engine.rundir.stopped import resumed_options, stopped_run

OPTIONS = SearchOptions(agents=2, budget_s=0.4, max_experiments=36, seed=5)

if __name__ == "__main__":
    run_dir, address, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    ray.cloudpickle.register_pickle_by_value(benchmarks.null_experiment)
    agents = make_agents("offline", OPTIONS.agents, OPTIONS.seed)
    if mode == "new":
        search = Search(load_task(template_path()), run_dir, OPTIONS, agents, run=null_experiment)
    else:
        task, info = stopped_run(run_dir)
        search = Search.resume(task, run_dir, resumed_options(info), agents, run=null_experiment)
        if search.nothing_left():
            sys.exit(3)
    start_ray(address, None)
    search.run()
