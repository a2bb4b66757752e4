"""What IDEs and type checkers see: ``py.typed`` ships, and the names the built-in plugins export
are declared for them in ``odeplug/__init__.py`` (under ``TYPE_CHECKING``) exactly."""

import ast
import pathlib

import odeplug as op
from odeplug import _plugins

PACKAGE = pathlib.Path(op.__file__).parent


def _type_checking_imports() -> dict[str, str]:
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    block = next(
        node for node in tree.body
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
    )
    return {
        alias.asname or alias.name: statement.module
        for statement in block.body if isinstance(statement, ast.ImportFrom)
        for alias in statement.names
    }


def test_the_builtin_exports_are_declared_for_type_checkers():
    builtin = {
        name: value.__module__.split(".")[0]
        for name, value in _plugins.exported().items()
        if value.__module__.split(".")[0] in {p.value.split(":")[0] for p in op.plugins()
                                              if p.distribution == "odeplug"}
    }
    assert _type_checking_imports() == builtin


def test_py_typed_ships_with_the_package():
    assert (PACKAGE / "py.typed").exists()
