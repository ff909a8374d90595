"""Sphinx configuration for the zmqrelay documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html``. The pages are
Markdown (MyST); the API reference is generated from the docstrings, which follow the Google
style. Nothing here needs the network: there is no intersphinx.
"""

from __future__ import annotations

from importlib.metadata import version as installed_version
from typing import Any

from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment

import zmqrelay.errors

project = "zmqrelay"
author = "zmqrelay developers"
copyright = "zmqrelay developers"
release = installed_version("zmqrelay")
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Link checking of cross-references stays lenient: base classes and types from pyzmq, anyio and
# the standard library have no documentation here to point at.
nitpicky = False

myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

autodoc_typehints = "description"
# Types of the documented parameters, and return types other than None: no "Return type: None"
# under every coroutine and exception, no bare parameter lists under the named tuples.
autodoc_typehints_description_target = "documented_params"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True  # show `anyio.TASK_STATUS_IGNORED`, not an object repr
autodoc_default_options = {"undoc-members": False}

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = "furo"
html_title = f"zmqrelay {release}"
pygments_style = "sphinx"
pygments_dark_style = "monokai"


def _resolve_reexported_error(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: Any
) -> Any:
    """Let ``zmqrelay.RemoteError`` in a docstring link to ``zmqrelay.errors.RemoteError``.

    The exceptions are documented where they are defined, in :mod:`zmqrelay.errors`, but the
    package re-exports them and the docstrings name them by the shorter path.
    """
    if node.get("refdomain") != "py":
        return None
    target: str = node.get("reftarget", "")
    package, _, name = target.rpartition(".")
    if package != "zmqrelay" or name not in zmqrelay.errors.__all__:
        return None
    domain = env.get_domain("py")
    return domain.resolve_xref(
        env,
        node["refdoc"],
        app.builder,
        node["reftype"],
        f"zmqrelay.errors.{name}",
        node,
        contnode,
    )


def setup(app: Sphinx) -> None:
    app.connect("missing-reference", _resolve_reexported_error)
