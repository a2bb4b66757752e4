"""The mutation list of tools/mutate.py stays true to the tree: every mutation's original text
is still there exactly once, the tests it names exist, and planting one really changes what
odeplug computes (in a copy of the tree, imported instead of this one)."""

import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest
import torch

import odeplug as op

ROOT = pathlib.Path(__file__).parent.parent


def _load_tool():
    spec = importlib.util.spec_from_file_location("odeplug_mutate_tool", ROOT / "tools" / "mutate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building the class
    spec.loader.exec_module(module)
    return module


mutate = _load_tool()


@pytest.mark.parametrize("mutation", mutate.MUTATIONS, ids=lambda m: m.name)
def test_the_original_text_occurs_exactly_once(mutation):
    assert mutate.occurrences(mutation) == 1, (
        f"{mutation.name}: {mutation.path} no longer holds its original text exactly once; "
        "update the mutation in tools/mutate.py to the code as it is now")
    assert mutation.replacement != mutation.original


@pytest.mark.parametrize("mutation", mutate.MUTATIONS, ids=lambda m: m.name)
def test_the_tests_a_mutation_names_exist(mutation):
    for test in mutation.tests:
        path, _, name = test.partition("::")
        source = (ROOT / path).read_text()
        if name:
            assert re.search(rf"^def {re.escape(name)}\(", source, flags=re.M), (
                f"{mutation.name} names {test}, which no longer exists: point it at the test that "
                "now covers what it checked, in tools/mutate.py")


def test_mutation_names_are_unique_and_there_are_enough():
    names = [m.name for m in mutate.MUTATIONS]
    assert len(set(names)) == len(names)
    assert len(names) >= 20


def test_a_planted_mutation_changes_what_the_copy_computes(tmp_path):
    """Planting "quadrature-weights-unscaled" in a copy leaves the weights of the 3-node rule on
    [0, 4] summing to 2 (their sum on [-1, 1]) instead of 4, and the copy is what is imported."""
    mutation = next(m for m in mutate.MUTATIONS if m.name == "quadrature-weights-unscaled")
    here = float(op.scaled_quadrature(op.GaussLegendre(), 3, 0.0, 4.0, torch.float64, "cpu")[1].sum())
    tree = mutate.copy_tree(tmp_path)
    mutate.apply(mutation, tree)
    probe = ("import torch, odeplug as op; print(op.__file__); "
             "print(float(op.scaled_quadrature(op.GaussLegendre(), 3, 0.0, 4.0, torch.float64, 'cpu')[1].sum()))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tree, env=mutate.environment(tree),
                         capture_output=True, text=True, check=True, timeout=120).stdout.split()
    assert pathlib.Path(out[0]).resolve().is_relative_to(tree.resolve()), out
    assert here == pytest.approx(4.0) and float(out[1]) == pytest.approx(2.0), (here, out)
