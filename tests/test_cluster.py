"""Clusters: cluster.yaml and cluster.local.yaml pass Ray's own validation, and one search uses
every GPU of a cluster of several nodes, including nodes that join or leave while it runs.
(tests/test_ray_up.py runs cluster.local.yaml for real.)"""

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "cluster.yaml"
LOCAL_YAML = ROOT / "cluster.local.yaml"
SETUP_SCRIPT = ROOT / "scripts" / "setup_node.sh"


def cluster_config(path: Path = CLUSTER_YAML) -> dict:
    return yaml.safe_load(path.read_text())


def commands(config: dict, *keys: str) -> str:
    return "\n".join(command for key in keys for command in config[key])


# -- cluster.yaml and cluster.local.yaml ------------------------------------------------------

def test_cluster_yaml_passes_rays_own_validation():
    validate_config(prepare_config(cluster_config()))


def test_cluster_local_yaml_passes_too():
    config = prepare_config(cluster_config(LOCAL_YAML))
    validate_config(config)
    assert config["provider"]["type"] == "local"


def test_rays_validation_would_catch_a_misspelt_key():
    config = cluster_config()
    config["available_node_types"]["gpu_1x"]["min_worker"] = 1
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config(config))


@pytest.mark.parametrize("path", [CLUSTER_YAML, LOCAL_YAML], ids=lambda path: path.name)
def test_every_node_runs_the_one_setup_script_on_this_checkout(path):
    config = cluster_config(path)
    assert config["setup_commands"] == ["bash ~/autoresearch/scripts/setup_node.sh"]
    assert config["file_mounts"]["~/autoresearch"] == "."


def test_the_setup_script_installs_the_ray_installed_here_the_makefiles_torch_and_this_project():
    script = SETUP_SCRIPT.read_text()
    makefile_torch = re.search(r"^TORCH := torch==(\S+)", (ROOT / "Makefile").read_text(), re.M)[1]
    assert re.search(r"^RAY_VERSION=(\S+)", script, re.M)[1] == ray.__version__
    assert re.search(r"^TORCH_VERSION=(\S+)", script, re.M)[1] == makefile_torch
    assert 'ray[default,tune]==$RAY_VERSION" -e "$PROJECT"' in script


def test_workers_declare_gpus_run_on_spot_and_the_head_takes_no_experiment():
    config = cluster_config()
    types = config["available_node_types"]
    head = types.pop(config["head_node_type"])
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    assert "InstanceMarketOptions" not in head["node_config"]
    assert sorted(worker["resources"]["GPU"] for worker in types.values()) == [1, 4]
    for worker in types.values():
        assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
        assert 0 <= worker["min_workers"] <= worker["max_workers"] <= config["max_workers"]


def test_on_premise_the_head_takes_no_experiment_and_no_worker_stops_the_machines_ray():
    config = cluster_config(LOCAL_YAML)
    assert "--num-cpus=0 --num-gpus=0" in commands(config, "head_start_ray_commands")
    assert "ray stop" not in commands(config, "worker_start_ray_commands")


@pytest.mark.parametrize("path", [CLUSTER_YAML, LOCAL_YAML], ids=lambda path: path.name)
def test_every_node_starts_ray_with_token_authentication_and_one_shared_token(path):
    config = cluster_config(path)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "export RAY_AUTH_MODE=token" in commands(config, key)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "export RAY_AUTH_MODE=token" in SETUP_SCRIPT.read_text(), "every shell, not just Ray's"


@pytest.mark.parametrize("path", [CLUSTER_YAML, LOCAL_YAML], ids=lambda path: path.name)
def test_the_users_task_folder_is_mounted(path):
    assert (ROOT / cluster_config(path)["file_mounts"]["~/task"] / "program.md").is_file()


# -- one search on a cluster of several nodes ---------------------------------------------------

@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> dict:
    """tests/cluster_scenarios.py, run once in a process of its own (a head without GPUs, GPU
    nodes of 2 and 1 logical GPUs; one search each: as is, a node joining, a node leaving)."""
    root = tmp_path_factory.mktemp("cluster")
    done = subprocess.run([sys.executable, "-m", "tests.cluster_scenarios", str(root)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((root / "report.json").read_text())


def nodes_of(rows: list[dict]) -> Counter:
    """Experiments per node (the node id that ends a row's `node`)."""
    return Counter(row["node"].rsplit("/", 1)[-1] for row in rows)


def test_experiments_run_on_every_gpu_node_at_once_and_never_on_the_head(scenarios):
    spread = scenarios["spread"]
    used = nodes_of(spread["rows"])
    assert set(used) == set(scenarios["gpu_nodes"].values())
    assert spread["slots"] == 3
    assert len(spread["rows"]) == 12 and all(row["status"] == "ok" for row in spread["rows"])
    starts = sorted(row["started_at"] for row in spread["rows"])
    running_at = [sum(r["started_at"] <= t < r["finished_at"] for r in spread["rows"])
                  for t in starts]
    assert max(running_at) == 3, "the three GPUs were never busy at once"


def test_every_row_names_the_gpu_model_of_its_node(scenarios):
    models = {scenarios["gpu_nodes"]["2 GPUs"]: "A10G", scenarios["gpu_nodes"]["1 GPU"]: "L4"}
    rows = scenarios["spread"]["rows"]
    assert all(row["accelerator"] == models[row["node"].rsplit("/", 1)[-1]] for row in rows)


def test_runs_asked_for_on_one_gpu_model_run_only_there(scenarios):
    runs = scenarios["pinned"]["runs"]
    assert len(runs) == 6
    assert {run["accelerator"] for run in runs} == {"L4"}
    assert {run["node"].rsplit("/", 1)[-1] for run in runs} == {scenarios["gpu_nodes"]["1 GPU"]}


def test_a_node_that_joins_mid_search_gets_experiments_without_a_restart(scenarios):
    joins = scenarios["joins"]
    on_new_node = [row for row in joins["rows"] if row["node"].endswith(joins["node"])]
    assert len(on_new_node) >= 2
    assert all(row["started_at"] >= joins["added_at"] for row in on_new_node)
    assert joins["slots"] == 5
    assert len(joins["rows"]) == 24 and all(row["status"] == "ok" for row in joins["rows"])


def test_a_node_that_leaves_mid_search_costs_only_its_experiments_in_flight(scenarios):
    leaves = scenarios["leaves"]
    rows, removed_at = leaves["rows"], leaves["removed_at"]
    by_id = {row["exp_id"]: row for row in rows}
    assert len(by_id) == len(rows) == 20, "an experiment was lost or recorded twice"
    assert set(leaves["finished_before"]) <= set(by_id)
    assert leaves["slots"] == 3
    in_flight = [by_id[exp_id] for exp_id in leaves["in_flight"]]
    assert all(row["status"] in ("ok", "crash") for row in in_flight)
    ran_again = [row for row in in_flight if row["started_at"] >= removed_at]
    assert ran_again, "no experiment was running on the node when it left"
    assert not any(row["node"].endswith(leaves["node"]) for row in ran_again)
    after = [row for row in rows if row["finished_at"] > removed_at]
    assert not any(row["node"].endswith(leaves["node"]) for row in after)


# -- joining a cluster: what a user is told when it cannot be done ------------------------------
# (tests/test_ray_up.py meets each of these on a real cluster; these need no cluster.)

@pytest.fixture
def gcs_answers(monkeypatch):
    """A cluster's GCS that answers at any address, and `ray.init` failing as `error` says."""
    import ray._raylet

    from engine import cluster

    def fail_with(error: Exception):
        def init(**_):
            raise error
        monkeypatch.setattr(ray._raylet, "GcsClient", lambda address: None)
        monkeypatch.setattr(ray, "init", init)
        with pytest.raises(cluster.ClusterUnavailable) as refused:
            cluster.join_cluster("10.0.0.10:6379")
        return str(refused.value)

    return fail_with


def test_a_cluster_of_another_ray_version_is_refused_naming_both_versions(gcs_answers):
    from ray._private.utils import check_version_info

    with pytest.raises(RuntimeError) as mismatch:
        check_version_info({"ray_version": "2.0.0", "python_version": "3.9.1"}, "this node")
    said = gcs_answers(mismatch.value)
    assert said.startswith("the Ray cluster at 10.0.0.10:6379 runs Ray 2.0.0 on Python 3.9.1, "
                           f"and this machine Ray {ray.__version__} on Python ")


def test_a_refused_token_is_named_by_where_it_came_from(gcs_answers, monkeypatch):
    from ray.exceptions import AuthenticationError

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    try:
        raise ConnectionError("Failed to connect") from AuthenticationError("InvalidAuthToken")
    except ConnectionError as error:
        said = gcs_answers(error)
    assert "refused the token in RAY_AUTH_TOKEN: it is not the cluster's" in said


def test_a_failure_joining_that_a_user_cannot_fix_keeps_rays_own_error(monkeypatch):
    import ray._raylet

    from engine import cluster

    def init(**_):
        raise KeyError("a bug somewhere")

    monkeypatch.setattr(ray._raylet, "GcsClient", lambda address: None)
    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(KeyError):
        cluster.join_cluster("10.0.0.10:6379")
