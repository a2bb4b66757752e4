"""The example third-party distribution (docs/examples/odeplug-example) installs with pip into a
fresh virtual environment, shows up in `odeplug plugins` under its own distribution name, and
passes `odeplug check odeplug_example` there.

The environment borrows this one's packages (torch, odeplug's dependencies, pip, setuptools)
through a .pth file and sees the odeplug tree under test, so nothing is downloaded.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sysconfig
import venv

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "odeplug-example"
NOUNS = ("WeightedRMSNorm()", "ClenshawCurtis()", "Fehlberg45()", "FourierSine()",
         "CheckpointedAdjoint()")


def _blocks(page: str, language: str) -> list[str]:
    text = (ROOT / "docs" / page).read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("path", ["pyproject.toml", *sorted(
    str(p.relative_to(EXAMPLE)) for p in (EXAMPLE / "odeplug_example").glob("*.py"))])
def test_docs_testing_md_shows_each_file_of_the_example_verbatim(path):
    language = "toml" if path.endswith(".toml") else "python"
    assert (EXAMPLE / path).read_text() in _blocks("testing.md", language), (
        f"docs/testing.md has no block equal to {path}: copy the file into the page again"
    )


def test_the_gradient_rule_of_plugins_md_is_the_example_file():
    rule = (EXAMPLE / "odeplug_example" / "_rule.py").read_text()
    assert rule in _blocks("plugins.md", "python")


@pytest.fixture(scope="module")
def example_env(tmp_path_factory):
    """A fresh venv with odeplug-example installed by pip; returns a runner of its Python."""
    base = tmp_path_factory.mktemp("example-env")
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The tree under test first (odeplug and its built-in plugins), then this environment's
    # packages: the editable install's own .pth is not read from a borrowed directory.
    borrowed = [ROOT, ROOT / "plugins", sysconfig.get_paths()["purelib"]]
    pathlib.Path(site, "borrowed.pth").write_text("".join(f"{p}\n" for p in borrowed))
    source = base / "odeplug-example"  # pip builds in the source tree: keep docs/ clean
    shutil.copytree(EXAMPLE, source)
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base), "CI": "true",
                   "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(source)],
        capture_output=True, text=True, env=environment, cwd=base, timeout=120,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, *args], capture_output=True, text=True, env=environment,
                              cwd=base, timeout=300)

    return run


def test_the_example_is_installed_into_a_fresh_environment(example_env):
    where = example_env("-c", "import odeplug_example, odeplug; print(odeplug_example.__file__); print(odeplug.__file__)")
    example_file, odeplug_file = where.stdout.split()
    assert "site-packages" in example_file and "docs" not in example_file
    assert odeplug_file.startswith(str(ROOT))


def test_odeplug_plugins_lists_it_with_its_distribution(example_env):
    result = example_env("-m", "odeplug._cli", "plugins")
    assert result.returncode == 0, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("odeplug_example "))
    assert "odeplug_example:register" in row and "odeplug-example" in row and "loaded" in row
    for name in ("WeightedRMSNorm", "ClenshawCurtis", "Fehlberg45", "FourierSine", "CheckpointedAdjoint"):
        assert name in row


def test_odeplug_check_passes_on_every_noun_of_the_example(example_env):
    result = example_env("-m", "odeplug._cli", "check", "odeplug_example", "--max-examples", "3",
                        "--derandomize")
    out = result.stdout
    rows = [line for line in out.splitlines() if line.startswith("odeplug_example ")]
    for noun in NOUNS:
        assert any(f" {noun} " in row for row in rows), (noun, out)
    # odeplug_examples() adds configurations besides the defaults.
    assert any(" CheckpointedAdjoint(every=1) " in row for row in rows)
    assert any(" WeightedRMSNorm(integral_weight=0.0) " in row for row in rows)
    failed = [row for row in rows if " FAIL " in row]
    assert result.returncode == 0 and not failed, out + result.stderr
    assert out.strip().splitlines()[-1].endswith("properties hold.")


def test_pytest_finds_odeplugs_plugin_by_its_entry_point_and_makes_the_items(example_env, tmp_path):
    result = example_env("-m", "pytest", "--odeplug-check", "odeplug_example", "-m", "odeplug_check",
                         "--collect-only", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                         str(tmp_path))
    items = [line for line in result.stdout.splitlines() if line.startswith("odeplug check ")]
    assert result.returncode == 0, result.stdout + result.stderr
    for noun in NOUNS:
        assert any(f"::{noun}: " in item for item in items), (noun, result.stdout)
    assert "odeplug check odeplug_example::ClenshawCurtis(): nodes lie in [-1, 1]" in items
