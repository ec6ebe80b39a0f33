"""``mtlsearch report``: one self-contained HTML file with the plots, the front, the
hypervolume, importances and expert utilisation of a real study."""

from __future__ import annotations

import base64
import re

import optuna
import pytest
from _tracking_support import run_cli, tracked_study
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from mtlsearch.search import Objective, SearchSettings, front_table, objectives_of
from mtlsearch.tracking import param_importances, render_report
from mtlsearch.tracking._summary import param_name


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    return tracked_study(tmp_path_factory)


@pytest.fixture(scope="module")
def page(tracked, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "sub" / "report.html"
    proc = run_cli(
        "report", "--study", tracked.name, "--storage", tracked.storage, "--out", str(out), cwd=out.parents[1]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out.read_text()


def test_the_report_is_self_contained(page):
    assert page.startswith("<!DOCTYPE html>")
    # nothing is fetched: no external scripts, styles or images
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script src" not in page and "<link" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 3  # Pareto, hypervolume, importances (+ heat-maps)
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)


def test_the_report_shows_the_front_with_gains_and_verdicts(tracked, page):
    study = tracked.load()
    rows = front_table(study, objectives_of(study))
    table = page.split("<h2>Front members")[1].split("<h2>")[0]
    numbers = [int(n) for n in re.findall(r"<tr><td>(\d+)</td>", table)]
    assert numbers == [r.trial for r in rows]
    for r in rows:  # each member's gain over single-task, with its sign
        gain = r.gains["y1:mse"]
        assert f"{gain:+.4f}" in table
    assert page.count('<svg class="pareto"') == 1  # one objective pair: y1:mse vs params


def test_the_report_has_hypervolume_importances_and_utilisation(tracked, page):
    study = tracked.load()
    assert "<h2>Hypervolume over trials</h2>" in page
    importances = page.split("<h2>Parameter importances</h2>")[1].split("<h2>")[0]
    searched = {param_name(name) for t in study.trials for name in t.params}  # MLflow's names
    shown = set(re.findall(r'<td class="l">([^<]+)</td>', importances))
    assert shown and shown <= searched
    heatmaps = page.split("<h2>Expert utilisation")[1].split("<h2>")[0]
    rows = front_table(study, objectives_of(study))
    gated = [r for r in rows if study.trials[r.trial].user_attrs.get("utilisation")]
    assert heatmaps.count("<figure>") == len(gated)


def test_importances_fall_back_and_explain_when_they_cannot_be_computed():
    objectives = (Objective("a:auc", "maximize", "a", "auc"), Objective("b:auc", "maximize", "b", "auc"))
    study = optuna.create_study(directions=["maximize", "maximize"])
    dist = {"x": FloatDistribution(0, 1)}
    study.add_trial(create_trial(values=[0.5, 0.5], params={"x": 0.1}, distributions=dist))
    result = param_importances(study, objectives)
    assert result.values == {} and "at least 3" in result.notes[0]
    for i in range(12):
        x = (i + 1) / 13
        study.add_trial(create_trial(values=[x, 1 - x], params={"x": x}, distributions=dist))
    result = param_importances(study, objectives)
    assert set(result.values) == {"all objectives", "a:auc", "b:auc"}
    assert result.values["a:auc"] == {"x": pytest.approx(1.0)}  # the only parameter


def test_render_needs_no_mlflow_and_escapes_names(tmp_path):
    settings = SearchSettings(
        space_text="levels: 1\n", space_source="<space>.yaml", dataset="<script>alert(1)</script>", n_trials=2
    )
    study = optuna.create_study(study_name="x<y", directions=["maximize"])
    study.set_user_attr("mtlsearch", settings.to_json())
    study.set_user_attr(
        "objectives", [{"name": "a:auc", "direction": "maximize", "task": "a", "metric": "auc"}]
    )
    study.add_trial(create_trial(values=[0.7], user_attrs={"preset": "single_task"}))
    html = render_report(study)
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert "x&lt;y" in html


def test_bad_output_and_unknown_study_are_one_line_errors(tracked, tmp_path):
    bad = run_cli(
        "report", "--study", tracked.name, "--storage", tracked.storage, "--out", "r.txt", cwd=tmp_path
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: --out r.txt: the report is HTML; name the file .html"
    missing = run_cli(
        "report", "--study", "nope", "--storage", tracked.storage, "--out", "r.html", cwd=tmp_path
    )
    assert missing.returncode == 2 and "--study nope: no such study" in missing.stderr
    assert not list(tmp_path.iterdir())  # nothing written
