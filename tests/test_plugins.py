"""Plugin loading, registration rules and dispatch hygiene."""


import os
import pathlib
import subprocess
import sys
import textwrap
import traceback
import warnings

import plum
import pytest
import torch

import odeplug as op
from odeplug import _dispatch, _plugins

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent


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
    code = """
        import warnings, odeplug as op
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            print(op.__file__, op.Dopri5().rtol, len([x for x in w if "brokenplug" in str(x.message)]))
    """
    odeplug_file, rtol, warned = _fresh_process(code, broken_distribution).split()
    assert odeplug_file == str(REPOSITORY / "odeplug" / "__init__.py")  # the tree under test
    assert (rtol, warned) == ("1e-07", "1")


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

    pirate = _dispatch.PluginScope("pirate", "pirate_package:register", "pirateplug", "1.0")
    with _dispatch.plugin_scope(pirate):
        with pytest.raises(op.PluginError, match="piracy"):
            op.register(norm)
    assert not pirate.staged_methods


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
    import re

    text = (REPOSITORY / "README.md").read_text()
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


def _fresh_process(code: str, *paths: pathlib.Path) -> str:
    """Run ``code`` in a new interpreter on the tree under test (not an installed copy), with
    ``paths`` (fixture distributions) after it on the import path."""
    env = {"PYTHONPATH": os.pathsep.join(map(str, (REPOSITORY, REPOSITORY / "plugins", *paths))),
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, env=env, check=True, cwd=REPOSITORY)
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
    """ % str(REPOSITORY)
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


# --- throw-away plugin distributions -------------------------------------------------------------


@pytest.fixture
def install(tmp_path, monkeypatch):
    """Install throw-away plugin distributions on sys.path:
    ``install("distname", {"entry point": "package:register"}, {"package/__init__.py": source})``.

    Afterwards, everything their plugins registered and exported is forgotten. Failures warn
    (CI sets ODEPLUG_STRICT_PLUGINS; a test that wants strict mode sets it again).
    """
    monkeypatch.delenv("ODEPLUG_STRICT_PLUGINS", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    entry_points, packages = [], set()

    def install_distribution(distribution, plugins, files, version="1.0"):
        info = tmp_path / f"{distribution}-{version}.dist-info"
        info.mkdir()
        info.joinpath("METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n"
        )
        info.joinpath("entry_points.txt").write_text(
            "[odeplug.plugins]\n" + "".join(f"{name} = {target}\n" for name, target in plugins.items())
        )
        for path, source in files.items():
            tmp_path.joinpath(path).parent.mkdir(parents=True, exist_ok=True)
            tmp_path.joinpath(path).write_text(textwrap.dedent(source))
            packages.add(path.split("/")[0].removesuffix(".py"))
        entry_points.extend(plugins)

    _plugins.reset_for_tests()
    yield install_distribution
    _plugins.reset_for_tests()
    for name in entry_points:
        _plugins.forget_plugin_for_tests(name)
    for module in [m for m in sys.modules if m.split(".")[0] in packages]:
        del sys.modules[module]


def _load(*expected_failures):
    """Load the plugins; return them by entry point and the warning of each expected failure."""
    if expected_failures:
        with pytest.warns(op.PluginLoadWarning) as record:
            infos = op.plugins()
    else:
        infos = op.plugins()
        record = []
    warned = {str(w.message).split("'")[1]: str(w.message) for w in record
              if issubclass(w.category, op.PluginLoadWarning)}
    assert sorted(warned) == sorted(expected_failures), warned
    return {info.name: info for info in infos}, warned


def test_a_plugins_package_cannot_pirate_after_its_hook_returned(install):
    install("lateplug", {"lateplug": "lateplug:register"}, {"lateplug/__init__.py": """
        import torch
        import odeplug
        from odeplug_solvers import Dopri5

        @odeplug.configuration
        class LateNorm(odeplug.Norm):
            pass

        def register():
            pass

        def add_own_method():
            def norm(n: LateNorm, x: torch.Tensor, layout: odeplug.Layout):
                return x.abs().max()
            odeplug.register(norm)

        def make_dopri5_take_euler_steps():
            def make_stepper(solver: Dopri5, field: odeplug.VectorField, layout: odeplug.Layout):
                return odeplug.make_stepper(odeplug.Euler(dt=0.1), field, layout)
            odeplug.register(make_stepper)
    """})
    infos, _ = _load()
    assert infos["lateplug"].status == "loaded"
    import lateplug

    with pytest.raises(op.PluginError, match=r"plugin 'lateplug'.*make_stepper\(Dopri5.*piracy"):
        lateplug.make_dopri5_take_euler_steps()
    assert not [r for r in _dispatch.methods() if r.verb == "make_stepper" and r.signature[0] is op.Dopri5]
    lateplug.add_own_method()  # its own types: allowed, and listed under the plugin
    (record,) = [r for r in _dispatch.methods() if r.signature[0] is lateplug.LateNorm]
    assert record.plugin == "lateplug"


def test_a_failed_plugin_leaves_no_method_and_no_name_behind(install):
    install("halfplug", {"halfplug": "halfplug:register"}, {"halfplug/__init__.py": """
        import torch
        import odeplug

        @odeplug.configuration
        class HalfNorm(odeplug.Norm):
            pass

        def register():
            @odeplug.register
            def norm(n: HalfNorm, x: torch.Tensor, layout: odeplug.Layout):
                return x.abs().max()

            odeplug.export(HalfNorm)
            raise RuntimeError("the hook fails after registering")

        def register_later():
            def quadrature(rule: HalfNorm, n: int):
                raise AssertionError("never registered")
            odeplug.register(quadrature)
    """})
    infos, warned = _load("halfplug")
    assert infos["halfplug"].status == "failed" and "RuntimeError" in warned["halfplug"]
    import halfplug

    assert not [r for r in _dispatch.methods() if halfplug.HalfNorm in r.signature]
    assert "HalfNorm" not in _plugins.exported()
    with pytest.raises(op.UnsupportedCombinationError, match=r"no method norm\(HalfNorm"):
        op.norm(halfplug.HalfNorm(), torch.ones(2), op.Layout.of(torch.ones(2)))
    with pytest.raises(op.PluginError, match="'halfplug'.*failed to load, so it cannot register"):
        halfplug.register_later()


def test_a_rule_broken_inside_a_hook_is_reported_at_the_plugins_own_line(install, monkeypatch):
    source = """
        import torch
        import odeplug

        def register():
            def norm(n: odeplug.RMSNorm, x: torch.Tensor, layout: odeplug.Layout):
                return x.sum()
            odeplug.register(norm)  # piracy, raised here and not when the hook returns
    """
    install("pirateplug", {"pirate": "pirateplug:register"}, {"pirateplug/__init__.py": source})
    monkeypatch.setenv("ODEPLUG_STRICT_PLUGINS", "1")
    with pytest.raises(op.PluginError, match="piracy") as caught:
        op.plugins()
    frames = traceback.extract_tb(caught.value.__cause__.__traceback__)
    in_plugin = [frame.line for frame in frames if frame.filename.endswith("pirateplug/__init__.py")]
    assert in_plugin[-1] == "odeplug.register(norm)  # piracy, raised here and not when the hook returns"


def test_builtins_load_first_so_any_plugin_can_use_their_names(install):
    install("earlyplug", {"aaa_early": "earlyplug:register"}, {"earlyplug/__init__.py": """
        import odeplug

        def register():
            global CHEAP, EarlyPath
            CHEAP = odeplug.Dopri5(rtol=1e-3)  # names of the solvers and sde plugins, which
            class EarlyPath(odeplug.WienerPath):  # sort after this entry point
                pass
            odeplug.export(EarlyPath)
    """})
    infos, _ = _load()
    assert infos["aaa_early"].status == "loaded", infos["aaa_early"].error
    order = [info.distribution for info in op.plugins()]
    assert order.index("earlyplug") > max(i for i, d in enumerate(order) if d == "odeplug")


def test_a_plugin_loads_after_the_plugins_it_requires(install):
    install("baseplug", {"zzz_base": "baseplug:register"}, {"baseplug/__init__.py": """
        import odeplug

        class BaseThing(odeplug.Noun):
            pass

        def register():
            odeplug.export(BaseThing)
    """})
    install("userplug", {"aaa_user": "userplug:register"}, {"userplug/__init__.py": """
        import odeplug

        def register():
            class UserThing(odeplug.BaseThing):
                pass
            odeplug.export(UserThing)

        register.requires = ("zzz_base",)
    """})
    infos, _ = _load()
    assert infos["aaa_user"].status == "loaded", infos["aaa_user"].error
    assert infos["aaa_user"].requires == ("zzz_base",)
    assert issubclass(_plugins.exported()["UserThing"], _plugins.exported()["BaseThing"])
    names = [info.name for info in op.plugins()]
    assert names.index("zzz_base") < names.index("aaa_user")


def test_a_missing_or_cyclic_requirement_fails_the_requiring_plugin(install):
    plugin = """
        def register():
            pass

        register.requires = {requires!r}
    """
    install("needyplug", {"needy": "needyplug:register", "chicken": "chickenplug:register",
                          "egg": "eggplug:register"}, {
        "needyplug.py": plugin.format(requires=("solvers", "not_installed")),
        "chickenplug.py": plugin.format(requires=("egg",)),
        "eggplug.py": plugin.format(requires=("chicken",)),
    })
    infos, warned = _load("needy", "chicken", "egg")
    assert "requires 'not_installed', but no installed distribution has" in warned["needy"]
    assert "cycle (chicken -> egg -> chicken)" in warned["egg"]
    assert "requires 'egg', which failed to load" in warned["chicken"]
    assert all(infos[name].status == "failed" for name in ("needy", "chicken", "egg"))


def test_a_name_looked_up_before_its_plugin_loaded_says_how_to_declare_it(install):
    install("baseplug2", {"zzz_base2": "baseplug2:register"}, {"baseplug2/__init__.py": """
        import odeplug

        class LaterThing(odeplug.Noun):
            pass

        def register():
            odeplug.export(LaterThing)
    """})
    install("hastyplug", {"aaa_hasty": "hastyplug:register"}, {"hastyplug/__init__.py": """
        import odeplug

        def register():
            odeplug.LaterThing
    """})
    _, warned = _load("aaa_hasty")
    assert "PluginNameNotLoadedError: odeplug.LaterThing was looked up while plugin 'aaa_hasty'" in warned["aaa_hasty"]
    assert 'register.requires = ("<entry point>",)' in warned["aaa_hasty"]
    from odeplug._errors import PluginNameNotLoadedError

    assert issubclass(PluginNameNotLoadedError, AttributeError)  # getattr(op, name, default) works


def test_a_name_exported_twice_fails_the_later_plugin_naming_both(install):
    install("thiefplug", {"aaa_thief": "thiefplug:register"}, {"thiefplug/__init__.py": """
        import odeplug

        class Dopri5(odeplug.Solver):
            pass

        def register():
            odeplug.export(Dopri5)
    """}, version="2.0")
    install("widgetsplug", {"widgets": "widgets_one:register", "widgets_too": "widgets_two:register"}, {
        "widgets_one.py": "import odeplug\nclass Widget(odeplug.Noun): pass\ndef register(): odeplug.export(Widget)\n",
        "widgets_two.py": "import odeplug\nclass Widget(odeplug.Noun): pass\ndef register(): odeplug.export(Widget)\n",
    })
    infos, warned = _load("aaa_thief", "widgets_too")
    import odeplug_solvers

    assert op.Dopri5 is odeplug_solvers.Dopri5 and infos["solvers"].status == "loaded"
    assert ("plugin 'aaa_thief' (thiefplug:register, distribution thiefplug 2.0) exports 'Dopri5', "
            "but plugin 'solvers' (odeplug_solvers:register, distribution odeplug") in warned["aaa_thief"]
    assert ("plugin 'widgets_too' (widgets_two:register, distribution widgetsplug 1.0) exports "
            "'Widget', but plugin 'widgets' (widgets_one:register") in warned["widgets_too"]


def test_two_distributions_cannot_share_an_entry_point_name(install):
    install("twinone", {"twin": "twin_one:register"}, {"twin_one.py": "def register(): pass\n"})
    install("twintwo", {"twin": "twin_two:register"}, {"twin_two.py": "def register(): pass\n"})
    infos, warned = _load("twin")
    statuses = sorted(info.status for info in op.plugins() if info.name == "twin")
    assert statuses == ["failed", "loaded"]
    assert "entry-point name is taken by twin_" in warned["twin"]


def test_an_ambiguous_method_is_refused_at_registration_naming_both():
    class Family(op.Norm):
        pass

    @op.configuration
    class Member(Family):
        pass

    def norm(n: Member, x: torch.Tensor, layout: object):
        return x.abs().max()

    def family_norm(n: Family, x: torch.Tensor, layout: op.Layout):
        return x.abs().sum()

    def both(n: Member, x: torch.Tensor, layout: op.Layout):
        return x.abs().min()

    family_norm.__name__ = both.__name__ = "norm"
    op.register(norm)
    try:
        with pytest.raises(op.PluginError, match=(
            r"norm\(Family, Tensor, Layout\) \(.*family_norm\) is ambiguous with "
            r"norm\(Member, Tensor, object\) \(.*<locals>\.norm, registered by user code\).*"
            r"Register a method for the intersection, norm\(Member, Tensor, Layout\), before"
        )):
            op.register(family_norm)
        op.register(both)
        op.register(family_norm)  # the intersection decided first: fine
        x, layout = torch.tensor([1.0, -3.0]), op.Layout.of(torch.ones(2))
        assert float(op.norm(Member(), x, layout)) == 1.0
    finally:
        for signature in ((Member, torch.Tensor, object), (Family, torch.Tensor, op.Layout),
                          (Member, torch.Tensor, op.Layout)):
            if (("norm", signature)) in _dispatch._SIGNATURES:
                _dispatch.unregister_for_tests("norm", signature)


def test_a_noun_given_options_without_configuration_says_how_to_declare_them():
    class ForgotConfiguration(op.Norm):
        scale: float = 1.0

    with pytest.raises(op.InvalidOptionError, match=(
        r"ForgotConfiguration\(scale=\.\.\.\): it is not a configuration class\. Decorate it "
        r"with @odeplug\.configuration.*or final"
    )):
        ForgotConfiguration(scale=2.0)
    assert isinstance(ForgotConfiguration(), op.Norm)  # no options: a stateless noun is fine

    @op.final
    class FinalWithoutInit(op.Norm):
        pass

    with pytest.raises(op.InvalidOptionError, match="@odeplug.final with no __init__"):
        FinalWithoutInit(2.0)
