"""The docs' code runs as written: every ```python block of README.md and docs/**/*.md runs as
pasted (a page's blocks in order, in one namespace), and the gradient rule of docs/plugins.md,
built on the backward kit, passes the gradient-truth matrix where a backsolve rule must."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch

import odeplug as op
from odeplug import _dispatch, _plugins
from odeplug.testing import check_gradient_case, gradient_cases

ROOT = pathlib.Path(__file__).parent.parent
DOCS = ROOT / "docs"


def _python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


@pytest.fixture(scope="module")
def checkpointed_adjoint():
    code = next(b for b in _python_blocks("plugins.md") if "class CheckpointedAdjoint" in b)
    namespace: dict = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)  # noqa: S102
    namespace["register"]()
    rule = namespace["CheckpointedAdjoint"]
    yield rule
    _dispatch.unregister_for_tests("solve", (op.ODEProblem, op.Solver, rule))
    _plugins.unexport_for_tests("CheckpointedAdjoint")


CASES = {c.name: c for c in gradient_cases()}


@pytest.mark.parametrize("case", ["closure over softplus(raw)", "contracting field, 24 time constants",
                                  "tuple state", "decreasing times", "Dropout in f",
                                  "parameter changed in place"])
def test_the_docs_gradient_rule_passes_the_matrix(checkpointed_adjoint, case):
    outcome = check_gradient_case(checkpointed_adjoint(every=3), CASES[case])
    assert outcome == ("refused" if CASES[case].outcome != "gradients" else "ok")


def test_the_docs_gradient_rule_resets_at_its_checkpoints(checkpointed_adjoint):
    """Its checkpoints are stops of the backward solve: each costs one evaluation (the reset)."""
    f = lambda t, y: -torch.sin(y) + torch.cos(t)  # noqa: E731
    y0 = torch.tensor([0.3, -1.0], dtype=torch.float64, requires_grad=True)
    ts = torch.tensor([0.0, 3.0], dtype=torch.float64)
    costs = {}
    for every in (1000, 2):
        sol = op.solve(op.ODEProblem(f, y0, ts), op.Dopri5(rtol=1e-8, atol=1e-8),
                       checkpointed_adjoint(every=every))
        sol.ys.sum().backward()
        costs[every] = sol.stats
    stops = costs[1000]["steps_accepted"] // 2  # kept ends strictly before the last output
    assert costs[2]["nfe_backward"] >= costs[1000]["nfe_backward"] + stops - 1


# -- every Python block of the README and the docs runs as pasted --------------------------------

#: A block that cannot run here is marked on the line before its fence, with the reason:
#: ``<!-- no-run: needs a CUDA device -->``. Keep these rare: an unmarked block must run.
NO_RUN = re.compile(r"^<!--\s*no-run:\s*(?P<reason>\S.*?)\s*-->$")
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")


def python_blocks(path: pathlib.Path) -> list[tuple[int, str, str | None]]:
    """(line of the first code line, code, no-run reason or None) for each ```python block."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
        if opening["lang"] == "python":
            before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = NO_RUN.match(before)
            blocks.append((i + 2, "\n".join(lines[i + 1 : end]) + "\n", marker["reason"] if marker else None))
        i = end + 1
    return blocks


def pages_with_python() -> list[pathlib.Path]:
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    return [page for page in pages if python_blocks(page)]


# Runs in a fresh interpreter per page, so that what a page registers (norms, rules, exports)
# cannot leak into other pages or tests. Each block is padded with blank lines so that a
# traceback's line numbers are the page's.
_RUNNER = """
import json, sys
namespace = {"__name__": "__main__"}
for name, line, code in json.load(open(sys.argv[1])):
    exec(compile("\\n" * (line - 1) + code, name, "exec"), namespace)
"""


def _environment() -> dict[str, str]:
    """The interpreter's environment, with the odeplug this test imported first on the path."""
    import odeplug_solvers

    env = dict(os.environ)
    roots = [str(pathlib.Path(op.__file__).parent.parent), str(pathlib.Path(odeplug_solvers.__file__).parent.parent)]
    env["PYTHONPATH"] = os.pathsep.join(roots + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


@pytest.mark.parametrize("page", pages_with_python(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_block_runs_as_pasted(page, tmp_path):
    name = str(page.relative_to(ROOT))
    blocks = python_blocks(page)
    runnable = [(name, line, code) for line, code, reason in blocks if reason is None]
    if not runnable:
        pytest.skip("; ".join(f"{name}:{line}: {reason}" for line, _, reason in blocks))
    script = tmp_path / "blocks.json"
    script.write_text(json.dumps(runnable))
    result = subprocess.run([sys.executable, "-c", _RUNNER, str(script)], cwd=tmp_path, env=_environment(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{name}: a block fails as pasted:\n{result.stderr[-4000:]}"


def test_the_block_finder_sees_markers_and_only_python_fences(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n```python\nx = 1\n```\n\n<!-- no-run: needs a GPU -->\n```python\ny = 2\n```\n"
                    "```bash\nls\n```\n```\nnot = python\n```\n")
    assert python_blocks(page) == [(3, "x = 1\n", None), (8, "y = 2\n", "needs a GPU")]
    assert NO_RUN.match("<!-- no-run: -->") is None  # a skip must say why
