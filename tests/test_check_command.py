"""`odeplug check` and `pytest --odeplug-check`: tables on built-in plugins, a planted bug caught
with its property and counterexample, unknown names refused with a suggestion."""

import os
import pathlib
import subprocess
import sys
import textwrap
import tomllib

import pytest
from hypothesis import settings

from odeplug import _dispatch, _plugins
from odeplug._cli import main
from odeplug.testing import _registry

ROOT = pathlib.Path(__file__).resolve().parent.parent

PLANTED = '''
"""A plugin with a planted bug: a "norm" that squares, so it is not homogeneous."""
import attrs
import torch
import odeplug as op


@op.configuration
class SquaredNorm(op.Norm):
    """sum(x²): non-negative and zero at zero, but ‖2x‖ = 4‖x‖."""


@op.configuration
class NeedsScale(op.Norm):
    """A norm whose option has no default."""

    scale: float = attrs.field()


def register():
    @op.register
    def norm(n: SquaredNorm, x: torch.Tensor, layout: op.Layout):
        return x.square().sum()

    @op.register
    def norm(n: NeedsScale, x: torch.Tensor, layout: op.Layout):  # noqa: F811
        return n.scale * x.abs().max()
'''


@pytest.fixture
def planted_module(tmp_path, monkeypatch):
    """The module ``planted_bug`` on sys.path; whatever `odeplug check` registers from it is
    unregistered afterwards."""
    (tmp_path / "planted_bug.py").write_text(PLANTED)
    monkeypatch.syspath_prepend(str(tmp_path))
    _plugins.ensure_loaded()
    before = len(_dispatch.methods())
    yield tmp_path
    for record in reversed(_dispatch.methods()[before:]):
        _dispatch.unregister_for_tests(record.verb, record.signature)
    sys.modules.pop("planted_bug", None)
    _registry._registered_unlisted.discard("planted_bug")


def test_check_on_builtin_plugins_passes_and_tabulates(capsys):
    profile = settings.default
    assert main(["check", "norms", "quadrature", "--max-examples", "3", "--derandomize"]) == 0
    assert settings.default == profile  # the caller's Hypothesis profile is back
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("norms ", "quadrature "))]
    for noun in ("RMSNorm()", "MaxNorm()", "MixedNorm()", "Seminorm()", "GaussLegendre()"):
        assert any(f" {noun} " in row and row.split()[-2] == "pass" for row in rows), noun
    assert "subadditive" in out and "FAIL" not in out
    assert out.strip().splitlines()[-1].endswith("properties hold.")


def test_a_planted_bug_fails_with_its_property_and_counterexample(planted_module, capsys):
    # Named twice: its register() runs once all the same.
    assert main(["check", "planted_bug", "planted_bug", "--max-examples", "10", "--derandomize"]) == 1
    out = capsys.readouterr().out
    failed = [line for line in out.splitlines() if " FAIL " in line]
    assert any("SquaredNorm()" in line and "absolutely homogeneous" in line for line in failed), out
    assert "FAIL SquaredNorm(): absolutely homogeneous" in out
    assert "counterexample:" in out
    # The class without defaults is reported, not skipped silently, and is not a failure.
    assert "NeedsScale" in out and "not checked: needs arguments" in out
    assert not any("NeedsScale" in line for line in failed)


def test_an_unknown_name_exits_2_with_a_suggestion(capsys):
    assert main(["check", "nroms"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no odeplug plugin or module named 'nroms' (did you mean 'norms'?)" in err
    assert "norms (odeplug_norms)" in err and "solvers (odeplug_solvers)" in err


def test_the_pytest_plugin_is_declared():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["pytest11"] == {"odeplug": "odeplug.testing.pytest_plugin"}


def _pytest(cwd: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    """pytest in a new interpreter with only odeplug's plugin (and Hypothesis') loaded, on the
    tree under test, whether or not this environment has the entry point installed yet."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), str(ROOT), str(ROOT / "plugins")]),
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "CI": "true"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "odeplug.testing.pytest_plugin", "-p", "hypothesis",
         "-p", "no:cacheprovider", "--rootdir", str(cwd), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def test_pytest_odeplug_check_makes_one_item_per_property_and_fails_on_the_bug(tmp_path):
    (tmp_path / "planted_bug.py").write_text(PLANTED)
    (tmp_path / "test_mine.py").write_text("def test_mine():\n    pass\n")
    result = _pytest(tmp_path, "--odeplug-check", "planted_bug", "--odeplug-max-examples", "10",
                     "-q", "-ra")
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "FAILED odeplug check planted_bug::SquaredNorm(): absolutely homogeneous" in out
    assert "counterexample:" in out
    assert "PASSED" not in out and "SquaredNorm(): non-negative, and zero at zero" not in out.split("short test summary")[-1]
    assert "SKIPPED" in out and "NeedsScale — not checked: needs arguments" in out
    # -m odeplug_check runs the generated items alone: the file's own test is deselected.
    selected = _pytest(tmp_path, "--odeplug-check", "planted_bug", "-m", "odeplug_check",
                       "--collect-only", "-q")
    listed = [line for line in selected.stdout.splitlines() if "::" in line]
    assert listed and all(line.startswith("odeplug check planted_bug::") for line in listed), selected.stdout
    assert any(line.endswith("SquaredNorm(): subadditive") for line in listed)
    # A name that is no plugin is a usage error, with the suggestion.
    unknown = _pytest(tmp_path, "--odeplug-check", "planted_bgu", "-q")
    assert unknown.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--odeplug-check: no odeplug plugin or module named 'planted_bgu'" in unknown.stderr


def test_the_pytest_plugin_changes_nothing_without_its_option(tmp_path):
    (tmp_path / "test_quiet.py").write_text(textwrap.dedent("""
        import sys

        def test_no_plugin_was_loaded(pytestconfig):
            import odeplug._plugins
            assert not odeplug._plugins.loaded()
            assert "odeplug_norms" not in sys.modules
            assert pytestconfig.getoption("odeplug_check") == []


        def test_fixtures(odeplug_settings, odeplug_temporary_plugin):
            import odeplug, torch

            @odeplug.configuration
            class Scratch(odeplug.Norm):
                pass

            def register():
                @odeplug.register
                def norm(n: Scratch, x: torch.Tensor, layout: odeplug.Layout):
                    return x.abs().max()

                odeplug.export(Scratch)

            odeplug_temporary_plugin(register)
            assert odeplug.Scratch is Scratch
            assert odeplug_settings.max_examples <= 25 and odeplug_settings.deadline is None
    """))
    result = _pytest(tmp_path, "-q", "-p", "no:randomly")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
