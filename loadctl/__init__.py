"""loadctl: a distributed HTTP load cluster for capacity planning."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("loadctl")
except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
    __version__ = "0.0.0+unknown"

# In a source checkout the subpackages live beside this folder (protocol/,
# agent/, coordinator/ at the repo root, mapped by setuptools' package-dir when
# installed). When Python runs from the repo root, this folder shadows the
# installed package, so let the submodule search look in the repo root too.
_repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_repo_root, "pyproject.toml")) and os.path.isfile(
    os.path.join(_repo_root, "protocol", "__init__.py")
):
    __path__.append(_repo_root)

__all__ = ["__version__"]
