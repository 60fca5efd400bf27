"""The report's figures: drawn from the build's numbers, shown in report.md, skipped with a note without matplotlib."""

import json
import shutil

import pytest

from rmeeto_export.pipelines import figures
from rmeeto_export.pipelines.build import build, rerun_verify
from rmeeto_export.pipelines.folder import FIGURES
from rmeeto_export.pipelines.settings import BuildSettings, EngineSettings, ModelSettings, ParitySettings
from tests.support.models import TINY_MERGE_R, TINY_VIM

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures") / "out"
    settings = BuildSettings(model=ModelSettings(name="vim_t", r=TINY_MERGE_R, overrides=TINY_VIM),
                             parity=ParitySettings(samples=4), engine=EngineSettings(trt="auto", plugins="off"))
    build(settings, out, log=lambda line: None)
    return out


def test_every_figure_is_a_png_shown_in_the_report(built):
    report = (built / "report.md").read_text()
    manifest = json.loads((built / "manifest.json").read_text())
    for name, caption in FIGURES.items():
        assert (built / name).read_bytes()[:8] == PNG_SIGNATURE
        assert f"![{caption}]({name})" in report
        assert name in manifest["artifacts"]


def test_parity_figure_has_every_graph_and_image(built):
    errors, limits = figures.parity_errors(json.loads((built / "parity.json").read_text()))
    assert set(errors) == {"model.onnx", "model.portable.onnx"}
    assert all(len(values) == 4 and max(values) <= limits[graph] for graph, values in errors.items())


def test_without_matplotlib_the_report_says_how_to_get_the_figures(built, tmp_path, monkeypatch):
    out = tmp_path / "copy"
    shutil.copytree(built, out)
    shutil.rmtree(out / "figures")  # so the figures stage is not up to date
    monkeypatch.setattr(figures, "pyplot", lambda: None)
    lines = []
    rerun_verify(out, log=lines.append)
    assert any("skipped" in line and figures.MISSING_MATPLOTLIB in line for line in lines)
    assert f"Figures: {figures.MISSING_MATPLOTLIB}" in (out / "report.md").read_text()
    assert not (out / "figures").exists()
