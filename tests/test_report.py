"""The HTML report: its content against the output tables, and its rendering in headless
Chromium (Debian's package; `make test` installs it, the test skips only where it is absent)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import gaussian_tables, make_config, read_delta
from distunlearn.commands.evaluate import run_evaluation
from distunlearn.commands.report import write_report
from distunlearn.commands.run import run_pipeline
from distunlearn.errors import InputError

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def evaluated_run(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    f, r, _, _ = gaussian_tables(spark, root, n_forget=120, n_retain=240, dim=2, shift=0.7, seed=5)
    cfg = make_config(root, f, r, methods=("lr_gauss", "random"), budgets=(0.5, 1.0))
    run_pipeline(spark, cfg)
    run_evaluation(spark, cfg)
    return cfg


def figures(page: str) -> list[str]:
    return re.findall(r'<figure id="([^"]+)"><img alt="[^"]*" src="data:image/png;base64,[A-Za-z0-9+/=]{200,}"', page)


def test_report_has_every_figure_and_the_tables_values(spark, evaluated_run, tmp_path):
    path = write_report(spark, evaluated_run, str(tmp_path / "r.html"), sample_rows=100)
    page = path.read_text()
    assert figures(page) == ["fig-scores", "fig-kl", "fig-frontier", "fig-eval"]
    summary = read_delta(f"{evaluated_run.output}/evaluation_summary")
    for _, row in summary.iterrows():
        shown = "–" if row.budget_to_halve is None or row.budget_to_halve != row.budget_to_halve \
            else f"{row.budget_to_halve:.4g}"
        assert f"<td>{row.method}</td><td>{row.baseline:.4g}</td><td>{shown}</td>" in page
    cal = read_delta(f"{evaluated_run.output}/calibration")
    assert f"the frontier reaches alpha = {cal.alpha_max.iloc[0]:.4g}" in page
    assert "(100 forget, 100 retain rows)" in page
    diag = read_delta(f"{evaluated_run.output}/diagnostics").query("method == 'lr_gauss' and budget == 0.5")
    assert f"<td>{diag.alpha.iloc[0]:.4f} / {diag.eps.iloc[0]:.4f}</td>" in page  # the every-budget table
    reached = cal.loc[cal.budget_for_target.notna()]
    best = sorted(reached.method[reached.budget_for_target == reached.budget_for_target.min()])
    assert f"<b>Best here: {' and '.join(best)}</b>" in page


def test_report_without_evaluation_says_how_to_get_it(spark, tmp_path):
    f, r, _, _ = gaussian_tables(spark, tmp_path, n_forget=60, n_retain=90, dim=2, seed=8)
    cfg = make_config(tmp_path, f, r, methods=("mu2",), budgets=(0.5,))
    run_pipeline(spark, cfg)
    page = write_report(spark, cfg, str(tmp_path / "r.html")).read_text()
    assert figures(page) == ["fig-scores", "fig-kl", "fig-frontier"]
    assert "No downstream evaluation for this run yet" in page


def test_report_of_unknown_run_is_an_error(spark, evaluated_run, tmp_path):
    import dataclasses

    with pytest.raises(InputError, match="run 'nope' has no row"):
        write_report(spark, dataclasses.replace(evaluated_run, run_id="nope"), str(tmp_path / "x.html"))
    assert not (tmp_path / "x.html").exists()


def test_report_renders_in_headless_chromium(spark, evaluated_run, tmp_path):
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (make test installs it with apt-get; that failed here)")
    path = write_report(spark, evaluated_run, str(tmp_path / "r.html"), sample_rows=100)
    shot = tmp_path / "page.png"
    # One browser start: the DOM after the page's own script ran, and a screenshot.
    res = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=10000", "--window-size=1200,2400", f"--screenshot={shot}",
                          "--dump-dom", path.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    body = re.search(r"<body[^>]*>", res.stdout)
    assert body is not None, res.stdout[:500]
    # Set by the page's own script on window load: every image decoded with a real width.
    assert 'data-figures="4"' in body.group(0) and 'data-rendered="4"' in body.group(0), body.group(0)
    assert "Every budget" in res.stdout and "Best here: " in res.stdout
    assert shot.exists() and shot.stat().st_size > 50_000  # a page of plots, not a blank screen
