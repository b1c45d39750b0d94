"""A Griffe extension: read txblocks.nn although it has no ``__init__.py``.

Griffe skips modules under a folder without an ``__init__`` module inside a regular
package (it takes them for scripts). Python imports them all the same, as
``txblocks.nn.attention`` and so on, so the API reference gives that folder a module of
its own before the submodules are loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import griffe

#: Folders of the package, without ``__init__.py``, whose modules are part of its API.
FOLDERS = ("nn",)


class NamespaceFolders(griffe.Extension):
    """Adds ``txblocks.nn`` (and any folder in FOLDERS) as a module of txblocks."""

    def on_module_members(self, *, mod: griffe.Module, **kwargs: Any) -> None:
        if mod.path != "txblocks" or isinstance(mod.filepath, list):
            return
        root = Path(mod.filepath).parent
        for name in FOLDERS:
            folder = root / name
            init = folder / "__init__.py"
            if name not in mod.members and folder.is_dir() and not init.exists():
                mod.set_member(name, griffe.Module(name, filepath=[folder], parent=mod))
