"""Development sessions: ``nox -s tests lint typecheck docs examples``."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "typecheck", "docs", "examples"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.11"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite (warnings are errors; every test has a timeout)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff lint and format checks, and the import-layer contracts."""
    session.install("-e", ".[lint]")
    code = ("src", "tests", "examples", "benchmarks", "noxfile.py")
    session.run("ruff", "check", *code, "docs/conf.py")
    session.run("ruff", "format", "--check", *code)
    session.run("lint-imports")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, the tests, the examples, the benchmarks and this file."""
    session.install("-e", ".[test,typecheck]", "nox")
    session.run("mypy")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation with warnings as errors."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session(python=PYTHON)
def examples(session: nox.Session) -> None:
    """Run the examples end to end (through their tests) and the demo."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/test_examples.py")
    session.run("zmqrelay", "demo")
