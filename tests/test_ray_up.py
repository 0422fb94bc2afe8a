"""`ray up` for real: Ray's cluster launcher runs cluster.local.yaml on this machine, a head at
127.0.0.1 and a worker at 127.0.0.2 declaring 2 logical GPUs, reached over SSH (tests/machines.py),
and every command of the README's on-premise recipe runs against it.

The story, in order: `ray up`; a search through `ray exec`, its status, its run dir brought back
with `ray rsync-down`; a second search that loses its worker node and gets it back; `ray down`,
which loses the head and its disk; `ray up` again, the run dir sent back with `ray rsync-up`,
`status --verify` and `resume`; then the errors a user meets on the head. The config the test
runs is cluster.local.yaml with this machine's addresses, user, key and ports put in, 2 logical
GPUs declared on the worker and the head's heartbeat timeout shortened (`on_this_machine`);
everything else is the file as it ships.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import ray
import yaml

from engine.experiment.task import template_path
from engine.views.rundata import load_run, trained
from tests.machines import Machines, Unavailable, start

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "cluster.local.yaml"
WORKER = "127.0.0.2"
SEARCH = ("autoresearch search ~/task --agents 2 --budget 1 --noise-seeds 2 --no-tune --quiet "
          "--address auto")
# The head restarts a worker after this long without its heartbeat: 30 s by default, shortened
# so that the lost node comes back sooner.
HEARTBEAT_TIMEOUT_S = 10
TRAINED = ("ok", "timeout")  # a loaded machine may push train.py past its 20 s of grace


# -- the machines, and this machine as the user's ----------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def on_this_machine(config: dict, key: Path) -> dict:
    """cluster.local.yaml for the machines of tests/machines.py: their addresses, root and the
    key, ports of their own, distinct for head and worker (they share one network), 2 logical
    GPUs on the worker, and the shorter heartbeat timeout."""
    config = {**config, "provider": {**config["provider"], "head_ip": "127.0.0.1",
                                     "worker_ips": [WORKER]},
              "auth": {"ssh_user": "root", "ssh_private_key": str(key)}}
    gcs = free_port()

    def with_ports(commands: list[str], *flags: str) -> list[str]:
        last = commands[-1].replace("6379", str(gcs)).replace(
            "--object-manager-port=8076", f"--object-manager-port={free_port()}")
        return [*commands[:-1], " ".join([last, f"--dashboard-agent-listen-port={free_port()}",
                                          "--min-worker-port=0", "--max-worker-port=0", *flags])]

    head = with_ports(config["head_start_ray_commands"], f"--dashboard-port={free_port()}")
    head[-1] = head[-1].replace(
        "export ", f"export AUTOSCALER_HEARTBEAT_TIMEOUT_S={HEARTBEAT_TIMEOUT_S} ", 1)
    return {**config, "head_start_ray_commands": head,
            "worker_start_ray_commands": with_ports(config["worker_start_ray_commands"],
                                                    "--num-gpus=2")}


class Launcher:
    """This machine as the user's own: a home of its own (the token `ray get-auth-token` makes)
    and temporary folders of its own (the launcher's record of the cluster), and the `ray` of
    this checkout, run from the top folder of the repository as the README says."""

    def __init__(self, folder: Path, config: Path) -> None:
        self.config = config
        (folder / "home").mkdir(parents=True)
        (folder / "tmp").mkdir()
        self.env = {**os.environ, "HOME": str(folder / "home"), "RAY_TMPDIR": str(folder / "tmp"),
                    "TMPDIR": str(folder / "tmp"),
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
            self.env.pop(name, None)

    def ray(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run `ray ARGS`; fail with its output when it fails."""
        done = subprocess.run(["ray", *args], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"ray {' '.join(args)}:\n{done.stdout[-3000:]}" \
                                     f"{done.stderr[-3000:]}"
        return done

    def timed(self, *args: str, timeout: float = 300) -> float:
        started = time.monotonic()
        self.ray(*args, timeout=timeout)
        return time.monotonic() - started

    def exec(self, command: str, timeout: float = 600) -> tuple[str, int]:
        """`ray exec CONFIG COMMAND` on the head: its output and its exit status (`ray exec`
        itself says only 0 or 1)."""
        done = subprocess.run(["ray", "exec", str(self.config), f'{command}; echo "exit $?"'],
                              cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        output = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout.replace("\r\n", "\n"))
        status = re.findall(r"^exit (\d+)$", output, re.M)
        assert status, f"ray exec {command!r}:\n{output[-3000:]}{done.stderr[-3000:]}"
        return output, int(status[-1])

    def exec_in_background(self, command: str) -> subprocess.Popen:
        return subprocess.Popen(["ray", "exec", str(self.config), command], cwd=ROOT,
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)


@pytest.fixture(scope="module")
def machines(tmp_path_factory):
    try:
        started = start(tmp_path_factory.mktemp("machines"))
    except Unavailable as why:
        pytest.skip(f"no SSH machines on loopback addresses here: {why}")
    yield started
    started.stop()
    left = started.processes()
    assert not left, f"processes of the machines outlived them: {left}"


@pytest.fixture(scope="module")
def other_ray(tmp_path_factory):
    """A Ray of someone else on this machine, which the cluster's `ray stop` must leave alone."""
    folder = tmp_path_factory.mktemp("other-ray")
    script = ("import signal, sys, time, ray\n"
              "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
              "ray.init(address='local', num_cpus=1, include_dashboard=False)\n"
              f"open({str(folder / 'ready')!r}, 'w').close()\n"
              "time.sleep(3600)\n")
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "HOME": str(folder)})
    deadline = time.monotonic() + 120
    while not (folder / "ready").exists():
        assert driver.poll() is None and time.monotonic() < deadline, "the other Ray did not start"
        time.sleep(0.5)
    yield driver
    driver.terminate()
    driver.wait(timeout=60)


def ray_processes(processes: list[psutil.Process]) -> list[psutil.Process]:
    """The GCS servers and raylets among `processes`."""
    found = []
    for process in processes:
        try:
            if process.name() in ("gcs_server", "raylet"):
                found.append(process)
        except psutil.Error:
            continue
    return found


def worker_node(machines: Machines) -> list[psutil.Process]:
    """The worker's Ray: its raylet and log monitor (their command lines name its address),
    and everything they started."""
    roots = []
    for process in machines.processes():
        try:
            if any(WORKER in part for part in process.cmdline()):
                roots.append(process)
        except psutil.Error:
            continue
    found = list(roots)
    for root in roots:
        try:
            found += root.children(recursive=True)
        except psutil.Error:
            continue
    return found


def results(machines: Machines, run: str) -> list[dict]:
    """The run's rows as they are on the head's disk now (the same disk as this machine's)."""
    try:
        return load_run(machines.home / "runs" / run).rows
    except (OSError, ValueError):
        return []


def training_on_the_worker(machines: Machines) -> set[int]:
    """The seeds of the experiments whose train.py runs on the worker now (every experiment has
    a seed of its own, handed to train.py in AUTORESEARCH_SEED)."""
    seeds = set()
    for process in worker_node(machines):
        try:
            if process.cmdline()[-1:] == ["train.py"]:
                seeds.add(int(process.environ()["AUTORESEARCH_SEED"]))
        except (psutil.Error, KeyError, ValueError):
            continue
    return seeds


def launcher_processes(key: Path) -> list[psutil.Process]:
    """The SSH connections the launcher left to linger (ControlPersist), named by the key."""
    found = []
    for process in psutil.process_iter():
        try:
            if str(key) in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def forget_ssh_sockets(cluster_name: str) -> None:
    """Remove the folder where Ray's launcher keeps its SSH connections' sockets for the
    cluster (/tmp/ray_ssh_USER/CLUSTER, both hashed)."""
    digest = hashlib.sha256(cluster_name.encode()).hexdigest()[:10]
    for folder in Path("/tmp").glob(f"ray_ssh_*/{digest}"):
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()


# -- the story ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def story(machines, other_ray, tmp_path_factory) -> dict:
    """Every step, once, in order; what each produced, for the tests below."""
    folder = tmp_path_factory.mktemp("launcher")
    config = folder / "cluster.local.yaml"
    config.write_text(yaml.safe_dump(on_this_machine(yaml.safe_load(CONFIG.read_text()),
                                                     machines.key), sort_keys=False))
    # The nodes are machines prepared beforehand: they use the environment this checkout
    # built (scripts/setup_node.sh finds it complete and installs nothing), and the task's data
    # built once here, in the test session's cache. The first two experiments would otherwise
    # each build it, at once, on 2 cores, within train.py's 20 s of grace.
    (machines.home / "venv").symlink_to(Path(sys.executable).parent.parent)
    (machines.home / ".cache").mkdir()
    (machines.home / ".cache" / "autoresearch").symlink_to(os.environ["AUTORESEARCH_CACHE"])
    subprocess.run([sys.executable, "prepare.py"], cwd=template_path(), check=True,
                   capture_output=True, timeout=300)
    launcher = Launcher(folder, config)
    copies = folder / "runs"
    told: dict = {"other_ray": {process.pid for process in ray_processes(
        [psutil.Process(other_ray.pid), *psutil.Process(other_ray.pid).children(recursive=True)])}}
    try:
        launcher.ray("get-auth-token", "--generate")
        told["up_s"] = launcher.timed("up", "-y", str(config))
        told["setup"] = (machines.home / ".bashrc").read_text()
        told["worker_joins_s"] = seconds_until_the_worker_starts(machines)

        started = time.monotonic()
        told["first"] = launcher.exec(f"{SEARCH} --max-experiments 6 --run-dir ~/runs/first")
        told["first_search_s"] = time.monotonic() - started
        told["ray_status"] = launcher.exec("ray status")
        told["status"] = launcher.exec("autoresearch status ~/runs/first")
        told["report"] = launcher.exec("autoresearch report ~/runs/first")
        # Into runs/, which rsync makes if need be: it makes only the last folder of a path.
        launcher.ray("rsync-down", str(config), "~/runs/first", f"{copies}/")
        told["first_copy"] = load_run(copies / "first")

        started = time.monotonic()
        told["second"] = lose_the_worker_mid_search(machines, launcher)
        told["second_search_s"] = time.monotonic() - started
        launcher.ray("rsync-down", str(config), "~/runs/second", f"{copies}/")
        told["second_copy"] = load_run(copies / "second")

        told["down_s"] = launcher.timed("down", "-y", str(config))
        told["left_after_down"] = ray_processes(machines.processes())
        told["other_ray_after_down"] = {process.pid for process in ray_processes(
            [psutil.Process(other_ray.pid),
             *psutil.Process(other_ray.pid).children(recursive=True)])}
        done = machines.ssh("127.0.0.1", "source ~/.bashrc; autoresearch search ~/task "
                            "--address auto --run-dir ~/runs/none; echo \"exit $?\"")
        told["no_cluster"] = done.stdout + done.stderr
        shutil.rmtree(machines.home / "runs")  # the head's disk went with it

        told["up_again_s"] = launcher.timed("up", "-y", str(config))
        launcher.ray("rsync-up", str(config), f"{copies / 'second'}", "~/runs/")
        told["verify"] = launcher.exec("autoresearch status --verify ~/runs/second")
        started = time.monotonic()
        told["resume"] = launcher.exec(
            "autoresearch resume ~/runs/second --address auto --max-experiments 5 --quiet")
        told["resume_s"] = time.monotonic() - started
        launcher.ray("rsync-down", str(config), "~/runs/second", f"{folder / 'resumed'}/")
        told["resumed_copy"] = load_run(folder / "resumed" / "second")

        told["errors"] = errors_on_the_head(launcher)
    finally:
        for process in launcher_processes(machines.key):
            process.kill()
        forget_ssh_sockets(yaml.safe_load(config.read_text())["cluster_name"])
        (folder / "timings.json").write_text(json.dumps(
            {key: value for key, value in told.items() if key.endswith("_s")}))
    return told


def experiment_folders(processes: list[psutil.Process]) -> set[Path]:
    """The temporary folders of the experiments these processes run (engine/runner.py runs
    train.py and the harness in autoresearch-*/work and autoresearch-*/score)."""
    folders = set()
    for process in processes:
        try:
            folder = Path(process.cwd()).parent
        except psutil.Error:
            continue
        if folder.name.startswith("autoresearch-"):
            folders.add(folder)
    return folders


def seconds_until_the_worker_starts(machines: Machines) -> float:
    """How long after `ray up` the head's autoscaler has the worker's raylet running."""
    started = time.monotonic()
    while not ray_processes(worker_node(machines)):
        assert time.monotonic() < started + 180, "the worker never started"
        time.sleep(0.5)
    return time.monotonic() - started


def lose_the_worker_mid_search(machines: Machines, launcher: Launcher) -> dict:
    """A second search; once an experiment has finished and another is training, the worker's
    Ray is killed (a lost node) and the head must start it again."""
    search = launcher.exec_in_background(
        f"{SEARCH} --max-experiments 3 --run-dir ~/runs/second")
    try:
        deadline = time.monotonic() + 300
        while not (trained(results(machines, "second"))
                   and (training := training_on_the_worker(machines))):
            assert search.poll() is None, search.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the second search made no progress"
            time.sleep(0.2)
        before = {row["exp_id"]: row for row in results(machines, "second")}
        killed = worker_node(machines)
        left_behind = experiment_folders(killed)
        killed_at = time.time()
        for process in killed:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.Error:
                continue
        output, _ = search.communicate(timeout=600)
    finally:
        if search.poll() is None:
            search.kill()
            search.wait()
    for folder in left_behind:  # the killed experiments' own; their reruns had others
        shutil.rmtree(folder, ignore_errors=True)
    return {"before": before, "training": training, "killed": len(killed),
            "killed_at": killed_at, "status": search.returncode, "output": output}


def errors_on_the_head(launcher: Launcher) -> dict[str, tuple[str, int]]:
    """The mistakes of the issue, each run on the head with the cluster up: what autoresearch
    printed and its exit status."""
    search = "search ~/task --address auto --run-dir ~/runs/refused"
    cases = {
        "token refused": f"RAY_AUTH_TOKEN=not-the-token autoresearch {search}",
        "token missing": f"RAY_AUTH_TOKEN_PATH=~/no-token autoresearch {search}",
        "no token sent": f"RAY_AUTH_MODE=disabled autoresearch {search}",
        # Another Ray here, as far as Ray's check can tell: it compares the version strings.
        "other ray": ("python -c 'import ray; ray.__version__ = \"2.0.0\"; "
                      f"from autoresearch.cli import main; main()' {search}"),
        "no task": "autoresearch search ~/no-task --address auto --run-dir ~/runs/refused",
    }
    script = "; ".join(f'echo "case {name}"; {command}; echo "status $?"'
                       for name, command in cases.items())
    output, _ = launcher.exec(script)
    found = re.findall(r"^case (.+?)\n(.*?)^status (\d+)$", output, re.M | re.S)
    return {name: (text, int(status)) for name, text, status in found}


# -- what a user sees --------------------------------------------------------------------------

def test_ray_up_starts_the_cluster_in_seconds_and_the_setup_script_readies_every_shell(story):
    assert story["up_s"] < 120
    assert "venv/bin" in story["setup"] and "RAY_AUTH_MODE=token" in story["setup"]


def test_a_search_through_ray_exec_runs_on_the_workers_gpus_and_never_on_the_head(story):
    output, status = story["first"]
    assert status == 0, output[-3000:]
    rows = trained(story["first_copy"].rows)  # besides, edits refused before any GPU
    assert len(rows) == 6 and all(row["status"] in TRAINED for row in rows), \
        [row["status"] for row in rows]
    assert len({row["node"] for row in rows}) == 1, "every experiment on the one GPU node"
    ray_status, status = story["ray_status"]
    # The 2 GPUs of the worker (the autoscaler's view, which may be seconds old: in use or not)
    assert status == 0 and re.search(r"\d/2\.0 GPU", ray_status), ray_status[-3000:]


def test_status_and_report_on_the_head_and_the_run_dir_brought_back_agree(story):
    output, status = story["status"]
    assert status == 0
    assert re.search(r"experiments: 6 trained", output), output
    output, status = story["report"]
    assert status == 0, output[-3000:]
    copy = story["first_copy"]
    tsv = copy.path.joinpath("results.tsv").read_text()
    assert tsv.count("\n") == 1 + len(trained(copy.rows)), tsv  # a header, then trained rows
    assert copy.path.joinpath("report.html").is_file()
    assert copy.repo.path.is_dir()


def test_a_lost_worker_node_comes_back_and_its_experiments_run_again_on_it(story):
    second = story["second"]
    assert second["status"] == 0, second["output"][-3000:]
    assert second["killed"] >= 2, "the worker's raylet and log monitor at least"
    rows = story["second_copy"].rows
    assert len(trained(rows)) == 3 and len({row["exp_id"] for row in rows}) == len(rows)
    by_id = {row["exp_id"]: row for row in rows}
    for exp_id, row in second["before"].items():
        assert by_id[exp_id]["finished_at"] == row["finished_at"], f"{exp_id} was lost or rerun"
    by_seed = {row["seed"]: row for row in rows}
    old_node = {row["node"] for row in trained(list(second["before"].values()))}
    for seed in second["training"]:
        row = by_seed[seed]
        assert row["status"] in TRAINED
        assert row["started_at"] > second["killed_at"], f"{row['exp_id']} was not run again"
        assert row["node"] not in old_node, f"{row['exp_id']} ran again on the lost node"
        assert row["node"].split("/")[0] == next(iter(old_node)).split("/")[0], "another host"


def test_ray_down_stops_the_cluster_and_no_other_ray_on_the_machine(story):
    assert story["left_after_down"] == []
    assert story["other_ray"] and story["other_ray_after_down"] == story["other_ray"]


def test_after_the_head_is_lost_a_new_head_resumes_the_copy_and_repeats_nothing(story):
    output, status = story["verify"]
    assert status == 0 and "consistent" in output, output
    output, status = story["resume"]
    assert status == 0, output[-3000:]
    rows = story["resumed_copy"].rows
    assert len(trained(rows)) == 5 and len({row["exp_id"] for row in rows}) == len(rows)
    assert all(row["status"] in TRAINED for row in trained(rows))
    by_id = {row["exp_id"]: row for row in rows}
    for row in story["second_copy"].rows:
        assert by_id[row["exp_id"]]["finished_at"] == row["finished_at"], "a result ran again"


@pytest.mark.parametrize(("case", "sentence"), [
    ("token refused", r"refused the token in RAY_AUTH_TOKEN: it is not the cluster's"),
    ("token missing", r"asks for a token and there is none here"),
    ("no token sent", r"asks for a token and this shell sends none: export RAY_AUTH_MODE=token"),
    ("other ray", rf"runs Ray {re.escape(ray.__version__)} on Python [\d.]+, and this machine "
                  r"Ray 2\.0\.0"),
    ("no task", r"no-task is not a folder"),
])
def test_a_users_mistake_on_the_head_is_one_sentence_and_exit_status_2(story, case, sentence):
    text, status = story["errors"][case]
    assert status == 2, text
    assert re.search(f"^Error: .*{sentence}", text, re.M), text
    assert "Traceback" not in text


def test_address_auto_with_no_cluster_running_is_one_sentence_and_exit_status_2(story):
    text = story["no_cluster"]
    assert re.search(r"^Error: no Ray cluster is running on this machine", text, re.M), text
    assert "exit 2" in text and "Traceback" not in text
