"""Plugin loading, registration rules and dispatch hygiene."""


import subprocess
import sys
import textwrap
import warnings

import plum
import pytest
import torch

import odeplug as op
from odeplug import _dispatch, _plugins


@pytest.fixture
def broken_distribution(tmp_path, monkeypatch):
    """A fixture distribution on sys.path whose odeplug entry point fails to import."""
    dist = tmp_path / "brokenplug-9.9.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 9.9\n")
    (dist / "entry_points.txt").write_text(
        "[odeplug.plugins]\nbroken = brokenplug_missing_module:register\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _plugins.reset_for_tests()
    yield tmp_path
    _plugins.reset_for_tests()


def test_broken_plugin_warns_once_and_everything_else_works(broken_distribution, monkeypatch):
    monkeypatch.delenv("ODEPLUG_STRICT_PLUGINS", raising=False)
    with pytest.warns(op.PluginLoadWarning) as record:
        infos = op.plugins()
    messages = [str(w.message) for w in record if issubclass(w.category, op.PluginLoadWarning)]
    assert len(messages) == 1
    assert "'broken'" in messages[0] and "brokenplug 9.9" in messages[0]
    broken = [p for p in infos if p.name == "broken"]
    assert broken and broken[0].status == "failed" and "ModuleNotFoundError" in broken[0].error
    assert all(p.status == "loaded" for p in infos if p.name != "broken")
    sol = op.solve(op.ODEProblem(lambda t, y: -y, torch.ones(2, dtype=torch.float64),
                                 torch.tensor([0.0, 1.0], dtype=torch.float64)))
    assert torch.allclose(sol.ys[-1], torch.full((2,), torch.e**-1, dtype=torch.float64), rtol=1e-6)


def test_strict_mode_turns_a_broken_plugin_into_an_error(broken_distribution, monkeypatch):
    monkeypatch.setenv("ODEPLUG_STRICT_PLUGINS", "1")
    with pytest.raises(op.PluginError, match="brokenplug 9.9"):
        op.plugins()


def test_import_survives_a_broken_plugin_in_a_fresh_process(broken_distribution):
    code = textwrap.dedent(
        """
        import warnings, odeplug as op
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            print(op.Dopri5().rtol, len([x for x in w if "brokenplug" in str(x.message)]))
        """
    )
    env = {"PYTHONPATH": str(broken_distribution), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.split() == ["1e-07", "1"]


def test_builtin_names_are_reachable_from_odeplug_and_their_package():
    import odeplug_norms
    import odeplug_solvers

    assert op.Dopri5 is odeplug_solvers.Dopri5
    assert op.RMSNorm is odeplug_norms.RMSNorm
    with pytest.raises(AttributeError, match="Names from plugins"):
        op.NoSuchSolver  # noqa: B018


def test_every_builtin_plugin_loaded_and_reports_methods():
    infos = {p.name: p for p in op.plugins()}
    for name in ("solvers", "norms", "direct", "adjoint", "torchdiffeq"):
        assert infos[name].status == "loaded", infos[name].error
        assert infos[name].distribution == "odeplug"
    assert any(m.startswith("make_stepper(AdaptiveRungeKutta") for m in infos["solvers"].methods)


def test_dispatch_is_faithful_for_every_verb():
    # Faithful resolvers cache on argument types: dispatch then costs ~1 µs.
    op.plugins()
    for name, verb in _dispatch.verbs().items():
        verb._resolve_pending_registrations()
        assert verb._resolver.is_faithful, name


def test_no_two_plugins_register_the_same_signature():
    op.plugins()
    seen = {}
    for record in _dispatch.methods():
        key = (record.verb, record.signature)
        assert key not in seen, (record, seen.get(key))
        seen[key] = record


def test_no_registered_method_has_a_return_annotation():
    op.plugins()
    for verb in _dispatch.verbs().values():
        for method in verb.methods:
            assert "return" not in getattr(method.implementation, "__annotations__", {}), method


def test_registering_a_duplicate_signature_is_refused():
    class Mine(op.Norm):
        pass

    def norm(n: Mine, x: torch.Tensor, layout: op.Layout):
        return x.abs().max()

    op.register(norm)
    try:
        with pytest.raises(op.PluginError, match="already registered"):
            op.register(norm)
    finally:
        _dispatch.unregister_for_tests("norm", (Mine, torch.Tensor, op.Layout))


def test_piracy_inside_a_plugin_is_refused():
    def norm(n: op.RMSNorm, x: torch.Tensor, layout: op.Layout):
        return x.sum()

    with _dispatch.plugin_context("pirate", "pirate_package"):
        with pytest.raises(op.PluginError, match="piracy"):
            op.register(norm)


def test_register_rejects_unknown_verbs_and_return_annotations():
    def frobnicate(x: torch.Tensor):
        return x

    with pytest.raises(op.PluginError, match="no generic function named 'frobnicate'"):
        op.register(frobnicate)

    class Other(op.Norm):
        pass

    def norm(n: Other, x: torch.Tensor, layout: op.Layout) -> torch.Tensor:
        return x

    with pytest.raises(op.PluginError, match="return annotation"):
        op.register(norm)


def test_unsupported_combination_lists_the_methods_that_exist():
    problem = op.ODEProblem(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]))
    with pytest.raises(op.UnsupportedCombinationError, match=r"TorchDiffEq.*Direct rule"):
        op.solve(problem, op.TorchDiffEq(), op.Adjoint())


def test_final_classes_cannot_be_subclassed():
    with pytest.raises(TypeError, match="final"):

        class MoreDopri(op.Dopri5):  # noqa: F841
            pass


def test_resolve_returns_the_plain_method_once():
    op.plugins()
    fn = op.resolve(op.norm, op.RMSNorm(), torch.ones(3), op.Layout.of(torch.ones(3)))
    assert not isinstance(fn, plum.Function)
    assert float(fn(op.RMSNorm(), torch.full((3,), 2.0), None)) == pytest.approx(2.0)


def test_cli_plugins_lists_methods(capsys):
    from odeplug._cli import main

    assert main(["plugins", "--methods"]) == 0
    out = capsys.readouterr().out
    assert "odeplug_solvers:register" in out and "norm" in out and "(Seminorm, Tensor, Layout)" in out


def test_cli_bench_list_and_unknown_task(capsys):
    from odeplug._cli import main

    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert "sines" in out and "overhead" in out
    assert main(["bench", "nope"]) == 2


def test_quiet_import_has_no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        op.plugins()


def test_the_docs_solver_example_works_with_every_stepping_rule():
    from odeplug_solvers import AdaptiveRungeKutta, ButcherTableau

    heun_euler = ButcherTableau(
        name="HeunEuler", c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), b_error=(-0.5, 0.5),
        order=2, dense=((1.0, -0.5), (0.0, 0.5)),
    )

    @op.configuration
    class HeunEuler(AdaptiveRungeKutta):
        tableau = heun_euler

    A = torch.tensor([[-0.3, 1.0], [-1.0, -0.3]], dtype=torch.float64)
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    ts = torch.linspace(0, 2, 3, dtype=torch.float64)
    exact = torch.linalg.matrix_exp(2 * A) @ y0.detach()
    for rule in (op.Direct(), op.Adjoint(), op.GQAdjoint()):
        sol = op.solve(op.ODEProblem(lambda t, y: A @ y, y0, ts), HeunEuler(rtol=1e-6, atol=1e-6), rule)
        assert torch.allclose(sol.ys[-1], exact, atol=1e-4)
        (grad,) = torch.autograd.grad(sol.ys[-1].sum(), y0)
        assert torch.allclose(grad, torch.linalg.matrix_exp(2 * A).sum(0), atol=1e-3)


def _readme_python_blocks():
    import pathlib
    import re

    text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_examples_run():
    example, plugin = _readme_python_blocks()[:2]
    namespace: dict = {}
    exec(compile(example, "README example", "exec"), namespace)  # noqa: S102
    assert namespace["sol"].stats["nfe_backward"] > 0
    assert namespace["f"].net[0].weight.grad is not None
    plugin_namespace: dict = {}
    exec(compile(plugin, "README plugin", "exec"), plugin_namespace)  # noqa: S102
    plugin_namespace["register"]()
    weighted = plugin_namespace["WeightedRMS"]
    assert op.WeightedRMS is weighted
    y0 = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    problem = op.ODEProblem(lambda t, y: torch.sin(y) - y, y0, torch.linspace(0, 2, 3, dtype=torch.float64))
    sol = op.solve(problem, op.Dopri5(norm=weighted()), op.Adjoint(norm=weighted(weight=4.0)))
    sol.ys.sum().backward()
    assert sol.stats["nfe_backward"] > 0 and y0.grad is not None


def test_odeplug_plugins_exits_non_zero_when_a_plugin_failed(broken_distribution, monkeypatch, capsys):
    from odeplug._cli import main

    monkeypatch.delenv("ODEPLUG_STRICT_PLUGINS", raising=False)
    with pytest.warns(op.PluginLoadWarning):
        assert main(["plugins"]) == 1
    assert "failed to load: broken" in capsys.readouterr().err


def _fresh_process(code: str) -> str:
    """Run ``code`` in a new interpreter on the tree under test (not an installed copy)."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent
    env = {"PYTHONPATH": f"{root}{':'}{root / 'plugins'}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, env=env, check=True, cwd=root)
    return out.stdout.strip()


def test_first_lookups_from_many_threads_wait_for_the_plugins():
    code = """
        import threading, odeplug, odeplug._plugins as plugins
        assert plugins.__file__.startswith(%r)
        start, errors = threading.Barrier(8), []
        def look():
            start.wait()
            try:
                odeplug.Dopri5, odeplug.GQAdjoint, odeplug.KarhunenLoeve
            except AttributeError as exc:
                errors.append(exc)
        threads = [threading.Thread(target=look) for _ in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(len(errors))
    """ % str(__import__("pathlib").Path(__file__).resolve().parent.parent)
    assert [_fresh_process(code) for _ in range(2)] == ["0", "0"]


def test_a_verb_called_first_loads_the_plugins():
    code = """
        import odeplug
        from odeplug_quadrature import GaussLegendre
        nodes, weights = odeplug.quadrature(GaussLegendre(), 3)
        print(len(nodes), round(float(weights.sum()), 12))
    """
    assert _fresh_process(code) == "3 2.0"


def test_a_dispatched_argument_given_by_keyword_gets_a_clear_error():
    like = torch.zeros(3)
    with pytest.raises(op.InvalidArgumentError, match="pass like, t0, t1 positionally"):
        op.sample(op.KarhunenLoeve(10), like=like, t0=0.0, t1=1.0)
    with pytest.raises(op.UnsupportedCombinationError, match=r"no method norm\(object, int\)"):
        op.norm(object(), 1)  # the wrong number of arguments is explained too


def test_a_parametric_annotation_is_refused_with_the_class_to_use():
    class Mine(op.Quadrature):
        pass

    def quadrature(rule: Mine, n: tuple[int, ...]):
        raise AssertionError("never called")

    with pytest.raises(op.PluginError, match=r"annotation of 'n' is tuple\[int, \.\.\.\].*n: tuple"):
        op.register(quadrature)
