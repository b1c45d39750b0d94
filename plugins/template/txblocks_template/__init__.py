"""txblocks-template: a txblocks plugin; the components are registered in plugin.py."""
