"""The chart README's values table is generated from values.yaml's `# --` comments (hack/chart_docs.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import chart_docs
from tests.packaging.tools import CHART


def test_readme_values_table_is_generated_from_values_yaml() -> None:
    fresh = chart_docs.generated_readme(CHART / "values.yaml", CHART / "README.md")
    assert (CHART / "README.md").read_text() == fresh, (
        "charts/modeldeploy/README.md's values table drifted from values.yaml: run `make manifests`"
    )


def test_every_value_has_a_row() -> None:
    table = chart_docs.table(CHART / "values.yaml")
    for key in ("image.tag", "pricing.managedPer1kUsd", "resources", "serviceMonitor.labels"):
        assert f"| `{key}` |" in table
    # each value the operator reads names its setting, as the chart's Deployment sets it
    row = next(line for line in table.splitlines() if line.startswith("| `pricing.managedPer1kUsd` |"))
    assert row.endswith("| `MODELDEPLOY_OPERATOR_MANAGED_PER_1K_USD` |"), row
    assert table.count("`MODELDEPLOY_OPERATOR_") == len(chart_docs.settings(CHART / "templates" / "deployment.yaml"))


@pytest.mark.parametrize(
    ("after", "added", "named"),
    [("tickSeconds: 5\n", "undocumentedKey: 3\n", r"\bundocumentedKey\b"),  # top level: by its name
     ("  port: 8000\n", "  nodePort: 30080\n", r"\bservice\.nodePort\b")],  # nested: by its path
)  # fmt: skip
def test_a_key_without_its_comment_is_refused_by_its_path(tmp_path: Path, after: str, added: str, named: str) -> None:
    values = tmp_path / "values.yaml"
    shutil.copy(CHART / "values.yaml", values)
    values.write_text(values.read_text().replace(after, after + added))
    with pytest.raises(chart_docs.ChartDocsError, match=named):
        chart_docs.table(values)


def test_check_names_the_stale_readme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# chart\n\n{chart_docs.BEGIN}\n| old | table |\n{chart_docs.END}\n\nmore\n")
    monkeypatch.setattr(chart_docs, "README", readme)
    monkeypatch.setattr(chart_docs, "ROOT", tmp_path)
    assert chart_docs.main(["--check"]) == 1
    assert "README.md is stale" in capsys.readouterr().err
    assert chart_docs.main([]) == 0
    text = readme.read_text()
    assert text.startswith(f"# chart\n\n{chart_docs.BEGIN}\n") and text.endswith(f"{chart_docs.END}\n\nmore\n")
    assert "| `image.repository` | `modeldeploy/modeldeploy` |" in text
    assert chart_docs.main(["--check"]) == 0
