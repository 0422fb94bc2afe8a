"""`autoresearch status` and `autoresearch diff`: where a search stands, and what one experiment
changed, read from the run dir alone."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from agents import make_agents
from benchmarks.null_experiment import null_experiment
from engine.driver import Search, SearchOptions
from engine.experiment.task import load_task, template_path
from engine.rundir.repo import RunRepo
from engine.views.rundata import load_run, trained
from engine.views.status import format_status, summarise
from tests.run_dirs import T0, hand_written, null_search, row, story

AUTORESEARCH = [sys.executable, "-m", "autoresearch.cli"]


def autoresearch(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*AUTORESEARCH, *map(str, args)], capture_output=True, text=True)


def test_status_counts_experiments_by_status_and_the_keep_rate_of_trained_changes():
    summary = summarise(hand_written(story(), kept=("e00003", "e00007")))
    assert summary["by_status"] == {"crash": 1, "interrupted": 1, "ok": 5, "rejected": 1}
    assert summary["experiments"] == 6
    assert summary["keep_rate"] == 2 / 4  # of e3, e4, e6, e7: the changes that trained
    assert summary["cost_usd"] == 1.0


def test_gpu_utilisation_is_the_drivers_own_accounting_when_the_checkpoint_has_it():
    run = hand_written([row(1), row(2)])
    run.population["gpu"] = {"slots": 4, "busy_s": 30.0, "capacity_s": 40.0}
    summary = summarise(run)
    assert summary["gpu_utilisation"] == pytest.approx(0.75)
    assert "GPU utilisation 75% (of 4 slots)" in format_status(summary)


def test_without_that_accounting_utilisation_is_busy_time_over_most_seen_at_once_by_elapsed():
    rows = [row(1, started_at=T0, finished_at=T0 + 4),
            row(2, started_at=T0 + 1, finished_at=T0 + 3),
            row(3, started_at=T0 + 4, finished_at=T0 + 10)]
    summary = summarise(hand_written(rows))
    assert summary["at_once"] == 2  # 3 starts as 1 ends: back to back, not at once
    assert summary["elapsed_s"] == 10
    assert summary["gpu_busy_s"] == 12
    assert summary["gpu_utilisation"] == pytest.approx(12 / (2 * 10))
    assert summary["experiments_per_hour"] == pytest.approx(3 / 10 * 3600)


def test_status_shows_the_best_head_and_the_chain_of_changes_that_led_to_it():
    heads = ({"exp_id": "e00003", "commit": "c3", "runs": [2.5], "children": 1},
             {"exp_id": "e00007", "commit": "c7", "runs": [2.4], "children": 0})
    summary = summarise(hand_written(story(), kept=("e00003", "e00007"), islands=heads))
    assert summary["best"] == {"exp_id": "e00007", "objective": 2.4, "runs": 1,
                               "description": "change 7", "metrics": {}}
    assert [step["exp_id"] for step in summary["lineage"]] == ["", "e00003", "e00007"]
    assert summary["islands"] == [
        {"index": 0, "head": "e00003", "objective": 2.5, "stale": 0},
        {"index": 1, "head": "e00007", "objective": 2.4, "stale": 0}]
    text = format_status(summary, now=T0 + 60)
    assert "best: val_bpb 2.400000 (e00007: change 7)" in text
    assert "keep rate -" not in text and "island 1: head e00007 2.4000" in text


def test_status_shows_the_goal_files_tracked_metrics_of_the_best_as_means_over_its_runs():
    rows = [*story()[:6],
            row(7, island=1, objective=2.4, parent="c3", val_perplexity=5.2, loss_spikes=0.0,
                inference_tokens_per_s=12_000.0),
            row(8, kind="confirm", island=1, commit="c7", parent="c7", objective=2.5,
                val_perplexity=5.6, loss_spikes=1.0, description="confirm e00007")]
    heads = ({"exp_id": "e00007", "commit": "c7", "runs": [2.4, 2.5], "children": 0},)
    run = hand_written(rows, islands=heads,
                       tracked=("val_perplexity", "loss_spikes", "inference_tokens_per_s"))
    summary = summarise(run)
    assert summary["best"]["metrics"] == {"val_perplexity": pytest.approx(5.4),
                                          "loss_spikes": 0.5, "inference_tokens_per_s": 12_000}
    lines = format_status(summary, now=T0 + 60).splitlines()
    assert lines[1:3] == [
        "best: val_bpb 2.450000, mean of 2 runs (e00007: change 7)",
        "  tracked: val_perplexity 5.4000 · loss_spikes 0.5000 · inference_tokens_per_s 12,000"]


def test_a_change_built_on_a_promotion_traces_its_lineage_through_the_winner(tmp_path):
    repo, start = RunRepo.create(tmp_path / "repo.git", {"train.py": "a = 1\n"}, "start")
    winner = repo.commit(start, {"train.py": "a = 2\n"}, "e00003")
    promoted = repo.merge_commit(winner, [start, winner], "promote e00003")
    child = repo.commit(promoted, {"train.py": "a = 3\n"}, "e00004")
    rows = [row(1, kind="baseline", island=None, commit=start, parent=""),
            row(3, commit=winner, parent=start),
            row(4, island=1, commit=child, parent=promoted)]
    run = hand_written(rows, promoted=("e00003",), path=tmp_path)
    assert [step["exp_id"] for step in run.lineage("e00004")] == ["", "e00003", "e00004"]
    assert "+a = 3" in run.change("e00004") and "-a = 2" in run.change("e00004")


def test_without_its_repository_a_lineage_stops_at_a_promotion_it_cannot_trace(tmp_path):
    # A run dir copied without repo.git: which winner a promotion commit holds is only in git.
    rows = [row(1, kind="baseline", island=None, commit="c1", parent=""),
            row(3, parent="c1"),
            row(4, island=1, parent="p3")]
    run = hand_written(rows, promoted=("e00003",), path=tmp_path)
    assert [step["exp_id"] for step in run.lineage("e00004")] == ["", "e00004"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    return null_search(tmp_path_factory.mktemp("status") / "run")


def test_status_json_shows_best_lineage_islands_rates_utilisation_and_cost(searched):
    shown = autoresearch("status", searched.run_dir, "--json")
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    best = searched.population.best()
    assert summary["best"]["exp_id"] == best.exp_id
    assert summary["best"]["objective"] == pytest.approx(best.objective)
    assert summary["lineage"][0]["description"] == "the starting code"
    assert summary["lineage"][-1]["exp_id"] == best.exp_id
    assert [i["head"] for i in summary["islands"]] == [
        i.head.exp_id for i in searched.population.islands]
    rows = searched.store.rows()
    assert summary["by_status"] == {"ok": len(trained(rows)), "rejected": 1}
    assert 0 < summary["keep_rate"] <= 1 and summary["experiments_per_hour"] > 0
    assert 0 < summary["gpu_utilisation"] <= 1 and summary["cost_usd"] == 0


def test_status_prints_a_few_lines_a_person_reads(searched):
    shown = autoresearch("status", searched.run_dir)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[1].startswith("best: val_bpb ")
    trained_here = len(trained(searched.store.rows()))
    for words in ("lineage:", "island 1: head", f"experiments: {trained_here} trained", "keep rate",
                  "experiments/h", "GPU utilisation", "cost $0.00"):
        assert words in shown.stdout


def test_status_names_each_metric_the_goal_file_tracks_even_where_no_run_measured_it(searched):
    # The bundled goal file tracks "validation perplexity, training stability, inference
    # speed", and its harness a holdout score; the null experiment measures none of them.
    summary = json.loads(autoresearch("status", searched.run_dir, "--json").stdout)
    assert summary["best"]["metrics"] == {"holdout_val_bpb": None, "val_perplexity": None,
                                          "loss_spikes": None, "inference_tokens_per_s": None}
    shown = autoresearch("status", searched.run_dir).stdout.splitlines()
    assert re.match(r"best: val_bpb [\d.]+ · holdout -(, mean of \d+ runs)? \(e\d+: ", shown[1])
    assert shown[2] == "  tracked: val_perplexity - · loss_spikes - · inference_tokens_per_s -"


def test_status_of_a_run_dir_whose_repository_is_gone_shows_what_it_can(searched, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(searched.run_dir, copy, ignore=shutil.ignore_patterns("repo.git"))
    shown = autoresearch("status", copy)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[1].startswith("best: val_bpb ")
    assert "tracked:" not in shown.stdout


def test_status_reads_the_run_dir_while_the_search_writes_it(ray_local, tmp_path):
    options = SearchOptions(agents=2, budget_s=0.05, max_experiments=10, noise_seeds=2)
    search = Search(load_task(template_path()), tmp_path / "run", options,
                    make_agents("offline", 2, 0), run=null_experiment)
    seen = []
    search.run(on_tick=lambda: seen.append(summarise(load_run(search.run_dir))["experiments"]))
    assert seen[0] == 0 and seen[-1] == len(trained(search.store.rows())) >= 10
    assert seen == sorted(seen)


def test_status_of_a_search_that_has_not_finished_an_experiment_yet(searched, tmp_path):
    (tmp_path / "run.json").write_text((searched.run_dir / "run.json").read_text())
    shown = autoresearch("status", tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "best: no experiment has a score yet" in shown.stdout


def test_diff_prints_the_change_against_its_parent(searched):
    winner = searched.population.promotions[0].exp_id
    shown = autoresearch("diff", searched.run_dir, winner)
    assert shown.returncode == 0, shown.stderr
    assert "-LEARNING_RATE = 3e-3\n+LEARNING_RATE = 0.01\n" in shown.stdout


def test_diff_of_a_refused_proposal_says_so_in_one_sentence(searched):
    rows = searched.store.rows()
    refused = next(r["exp_id"] for r in rows if r["status"] == "rejected")
    shown = autoresearch("diff", searched.run_dir, refused)
    assert shown.returncode == 2
    assert shown.stderr.strip() == (f"Error: {refused} was refused before it was committed: "
                                    "it changes prepare.py, which is protected")


@pytest.mark.parametrize("command", [["status"], ["report"], ["diff", "e00001"],
                                     ["reproduce", "e00001"]])
def test_commands_refuse_a_folder_that_is_not_a_run_dir(tmp_path, command):
    refused = autoresearch(command[0], tmp_path, *command[1:])
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"Error: {tmp_path} is not a run dir (it has no run.json)"


def test_diff_and_reproduce_refuse_an_unknown_experiment(searched):
    for command in ("diff", "reproduce"):
        refused = autoresearch(command, searched.run_dir, "e99999")
        assert refused.returncode == 2
        assert refused.stderr.strip() == f"Error: {searched.run_dir} has no experiment e99999"
