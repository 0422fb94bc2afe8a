"""`autoresearch report`: progress.png and one self-contained report.html.

The plot is checked from the data that draws it (engine.views.plots.progress); the page is
checked as HTML, and as headless Chromium renders it from disk."""

import base64
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import pytest
from matplotlib.image import imread

from engine.views.plots import colour, progress, usage
from engine.views.report import leaderboard
from engine.views.rundata import load_run
from tests.run_dirs import T0, hand_written, null_search, row, story

AUTORESEARCH = [sys.executable, "-m", "autoresearch.cli"]
CHROMIUM = shutil.which("chromium")


def test_every_trained_experiment_is_a_dot_and_refused_or_stopped_ones_are_not():
    plot = progress(hand_written(story(), kept=("e00003", "e00007")))
    assert [dot.exp_id for dot in plot.dots] == ["e00001", "e00002", "e00003", "e00004",
                                                 "e00007"]
    assert [dot.x for dot in plot.dots] == [1, 2, 3, 4, 6]
    assert plot.failed == [(5, "e00006", "crash")]


def test_kept_changes_are_marked_and_labelled_with_what_they_changed():
    plot = progress(hand_written(story(), kept=("e00003", "e00007"), promoted=("e00003",)))
    assert [dot.exp_id for dot in plot.kept] == ["e00003", "e00007"]
    assert plot.labels == [(3, 2.5, "change 3"), (6, 2.4, "change 7")]
    assert [dot.exp_id for dot in plot.dots if dot.promoted] == ["e00003"]


def test_the_running_best_steps_at_the_starting_code_and_at_kept_changes_only():
    rows = [*story(), row(9, objective=2.0)]  # better still, but not kept: a lucky discard
    plot = progress(hand_written(rows, kept=("e00003", "e00007")))
    assert plot.best == [(1, 3.0), (3, 2.5), (6, 2.4), (7, 2.4)]


def test_each_island_has_its_own_colour_and_the_starting_code_its_own():
    plot = progress(hand_written(story(), kept=("e00003",)))
    assert plot.islands == [0, 1]
    assert len({colour(None), *(colour(k) for k in plot.islands)}) == 3


def test_experiments_can_be_placed_by_the_time_they_finished():
    plot = progress(hand_written(story()), by="time")
    assert plot.x_label == "seconds since the search started"
    assert [dot.x for dot in plot.dots] == [2, 3, 4, 5, 8]


def test_a_change_far_worse_than_the_start_does_not_squash_the_plot():
    plot = progress(hand_written([*story(), row(9, objective=40.0)], kept=("e00003",)))
    low, high = plot.y_limits
    assert low < 2.5 and 3.0 < high < 40.0


def test_cost_and_utilisation_over_time_add_up():
    rows = [row(1, started_at=T0, finished_at=T0 + 5, cost_usd=1.0, queued_at=T0),
            row(2, started_at=T0 + 5, finished_at=T0 + 10, cost_usd=2.0, queued_at=T0 + 6)]
    shown = usage(hand_written(rows), bins=2)
    assert shown.times == [5, 10]
    assert shown.utilisation == [1.0, 1.0]
    assert shown.cost_usd == [1.0, 3.0]


def test_the_leaderboard_shows_each_tracked_metric_of_a_change_beside_its_score():
    rows = [*story()[:2], row(3, objective=2.5, val_perplexity=6.1, loss_spikes=2.0),
            row(7, island=1, objective=2.4, parent="c3", val_perplexity=5.2)]
    board = leaderboard(hand_written(rows, tracked=("val_perplexity", "loss_spikes")))
    assert board.splitlines()[1:4] == [
        "rank  exp      island  strategy       val_bpb  val_perplexity  loss_spikes  description",
        "   1  e00007        1  -             2.400000          5.2000            -  change 7",
        "   2  e00003        0  -             2.500000          6.1000            2  change 3"]


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A finished null search with its report written by the command."""
    search = null_search(tmp_path_factory.mktemp("report") / "run")
    done = subprocess.run([*AUTORESEARCH, "report", search.run_dir], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    return search


def test_report_writes_progress_png_and_report_html_into_the_run_dir(reported):
    assert imread(reported.run_dir / "progress.png").shape[1] >= 1000
    assert (reported.run_dir / "report.html").stat().st_size > 10_000


def test_the_page_holds_the_leaderboard_the_lineage_each_winners_diff_and_the_goal(reported):
    page = (reported.run_dir / "report.html").read_text()
    run = load_run(reported.run_dir)
    leaderboard = page[page.index('<table id="leaderboard">'):page.index("</table>")]
    best = min((r for r in run.rows if r["kind"] == "mutation" and r["status"] == "ok"),
               key=lambda r: r["objective"])
    assert f"<td>{best['exp_id']}</td>" in leaderboard.split("</tr>")[1]
    for winner in reported.population.promotions:
        assert f'<h3 id="{winner.exp_id}">' in page
    assert '<span class="add">+LEARNING_RATE = 0.01</span>' in page
    assert "promotion 1</span>" in page
    assert "# Goal\nMinimize validation bits per byte" in page


def test_the_pages_leaderboard_has_a_column_for_each_metric_the_goal_file_tracks(reported):
    page = (reported.run_dir / "report.html").read_text()
    header = page[page.index('<table id="leaderboard">'):].split("</tr>")[0]
    # The holdout score first, beside the score it shadows; then the goal file's metrics.
    assert ("<th>val_bpb</th><th>holdout_val_bpb</th><th>val_perplexity</th><th>loss_spikes</th>"
            "<th>inference_tokens_per_s</th>") in header


def test_the_page_needs_nothing_but_itself(reported):
    links = _Links()
    links.feed((reported.run_dir / "report.html").read_text())
    assert links.sources and all(src.startswith("data:image/png;base64,")
                                 for src in links.sources)
    assert links.scripts == 0 and links.stylesheets == 0
    for src in links.sources:
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_the_page_renders_in_headless_chromium_from_disk_without_errors(reported, tmp_path):
    page = (reported.run_dir / "report.html").resolve().as_uri()
    dom = _chromium(tmp_path, "--dump-dom", page)
    assert '<table id="leaderboard">' in dom.stdout
    assert '<span class="add">+LEARNING_RATE = 0.01</span>' in dom.stdout
    # Console messages are where a page's errors go, the refused loads of its security policy
    # among them; and the page is the only file it reads.
    assert not re.findall(r"CONSOLE.*", dom.stderr)
    assert re.findall(r"FileURLLoader::Start: (\S+)", dom.stderr) == [page]
    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", page)
    pixels = imread(shot)[..., :3].reshape(-1, 3)
    assert len({tuple(p) for p in pixels[::7].round(2).tolist()}) > 100  # not a blank page


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
         "--v=1", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


class _Links(HTMLParser):
    """What a page would load: image sources, scripts and style sheets."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.scripts = self.stylesheets = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.sources.append(values.get("src") or "")
        self.scripts += tag == "script"
        self.stylesheets += tag == "link"
