"""The package layering (ARCHITECTURE.md, "Layers"), checked on the source: dependencies
point down only, and the tools stand beside the daemon, not on it. Inside the daemon, the
call-leg listeners receive a ``CallAdmission`` (``daemon/_admission.py``) and never import
the daemon itself nor the cluster glue.

Read from the import statements (absolute and relative, at any depth, lazy ones in
functions included), so a late ``from ..daemon._x import y`` inside a function is
caught as well as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BRIDGE = Path(__file__).resolve().parents[1] / "bridge"

# package -> the bridge packages it must never import
FORBIDDEN = {
    "media": {"dialects", "transports", "streams", "daemon", "tools"},
    "dialects": {"transports", "streams", "daemon", "tools"},
    "transports": {"media", "dialects", "streams", "daemon", "tools"},
    "streams": {"daemon", "tools"},
    "daemon": {"tools"},
    "tools": {"daemon"},
}


# module -> the bridge modules it must never import (nor anything inside them). The
# listeners get the daemon's CallAdmission, as the admin API gets its AdminBackend.
_NOT_THE_DAEMON = frozenset({"bridge.daemon._daemon", "bridge.daemon._clusterglue"})
FORBIDDEN_MODULES = {
    "bridge.daemon._admission": _NOT_THE_DAEMON,
    "bridge.daemon._audiosocket": _NOT_THE_DAEMON,
    "bridge.daemon._carrier": _NOT_THE_DAEMON,
    "bridge.daemon._rtp": _NOT_THE_DAEMON,
    "bridge.daemon._admin": _NOT_THE_DAEMON,
}


def _imported_modules(source: str, module: str) -> set[str]:
    """The dotted names the module ``module`` (dotted) imports, absolute. For ``from X
    import a`` both ``X`` and ``X.a`` (``a`` may be a submodule or a name in X)."""
    package = module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module:
                found.add(target)
            # "from .. import daemon" names the package in the alias.
            found.update(f"{target}.{a.name}" for a in node.names)
    return found


def _imported_packages(source: str, module: str) -> set[str]:
    """The ``bridge.<package>`` names the module ``module`` (dotted) imports."""
    found: set[str] = set()
    for name in _imported_modules(source, module):
        parts = name.split(".")
        if parts[0] == "bridge" and len(parts) > 1:
            found.add(parts[1])
    return found


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(BRIDGE.parent).with_suffix("").parts)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_down(package: str) -> None:
    wrong = {
        str(path.relative_to(BRIDGE.parent)): sorted(
            _imported_packages(path.read_text(), _module_name(path)) & FORBIDDEN[package]
        )
        for path in sorted((BRIDGE / package).glob("*.py"))
    }
    assert {file: names for file, names in wrong.items() if names} == {}


@pytest.mark.parametrize(
    "source",
    [
        "def f():\n    from ..daemon._logging import configure_logging\n",
        "from .. import daemon\n",
        "import bridge.daemon._config\n",
        "from bridge.daemon import _config\n",
    ],
)
def test_the_checker_sees_every_form_of_import(source: str) -> None:
    # Guard the guard: each form, lazy ones included, is seen from a tool.
    assert _imported_packages(source, "bridge.tools._probe") == {"daemon"}


@pytest.mark.parametrize("module", sorted(FORBIDDEN_MODULES))
def test_listeners_never_import_the_daemon(module: str) -> None:
    path = BRIDGE.parent / (module.replace(".", "/") + ".py")
    imported = _imported_modules(path.read_text(), module)
    wrong = {
        name
        for name in imported
        for banned in FORBIDDEN_MODULES[module]
        if name == banned or name.startswith(banned + ".")
    }
    assert wrong == set()


@pytest.mark.parametrize(
    "source",
    [
        "from ._daemon import Daemon\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._daemon import Daemon\n",
        "from . import _daemon\n",
        "def f():\n    from . import _clusterglue\n",
        "import bridge.daemon._daemon\n",
        "from bridge.daemon import _daemon\n",
        "from bridge.daemon._daemon import Daemon\n",
    ],
)
def test_the_module_checker_sees_every_form_of_import(source: str) -> None:
    imported = _imported_modules(source, "bridge.daemon._probe")
    assert imported & _NOT_THE_DAEMON


def test_the_checker_resolves_relative_imports_from_the_module_package() -> None:
    assert _imported_packages("from ._call import x\n", "bridge.tools._probe") == {"tools"}
    assert _imported_packages("from .._errors import x\n", "bridge.tools._probe") == {"_errors"}
