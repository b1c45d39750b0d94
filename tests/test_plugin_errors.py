"""Broken plugins: each is skipped and named in one warning, and the rest still works.

Installed plugins are small distributions written under ``tmp_path`` (a package plus
its ``*.dist-info``), found by ``importlib.metadata`` like a ``pip install``-ed one.
"""

from __future__ import annotations

import importlib
import re
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

import txblocks
from txblocks import (
    BuildError,
    ComponentConfig,
    PluginError,
    Registry,
    RegistryError,
    TxblocksPluginWarning,
    load_registry,
    load_spec,
)
from txblocks.plugins import AUTOLOAD_ENV, ENTRY_POINT_GROUP, PluginStatus, default_registry, plugin_status

TINY = {"arch": "decoder", "vocab_size": 32, "max_seq_len": 16, "d_model": 16, "n_layers": 2,
        "n_heads": 2}

GOOD = '''
    import torch
    import txblocks

    @txblocks.hookimpl
    def txblocks_register(registry):
        registry.add("norm", "good_norm", lambda dim, config: torch.nn.Identity())
    '''


def install(root: Path, dist: str, source: str, version: str = "0.1") -> None:
    """A distribution ``dist`` whose entry point ``{dist}`` is the module ``{dist}_pkg.plugin``."""
    package = root / f"{dist}_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "plugin.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = root / f"{dist}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
                                   encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{dist} = {dist}_pkg.plugin\n",
                                           encoding="utf-8")
    importlib.invalidate_caches()


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path with one working plugin (``txb_good``) installed."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    install(tmp_path, "txb_good", GOOD)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("txb_"):
            del sys.modules[name]
    importlib.invalidate_caches()
    default_registry.cache_clear()


def _load_with_one_warning(match: str) -> Registry:
    with pytest.warns(TxblocksPluginWarning) as record:
        registry = load_registry()
    messages = [str(w.message) for w in record if issubclass(w.category, TxblocksPluginWarning)]
    assert len(messages) == 1, messages
    assert re.search(match, messages[0]), messages[0]
    assert ("norm", "good_norm") in registry  # the rest still works
    return registry


def _status(registry: Registry, name: str) -> PluginStatus:
    return next(s for s in plugin_status(registry) if s.name == name)


def _module(name: str, **attrs: object) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


# --- installed plugins: skipped with a warning ---------------------------------------------


def test_a_duplicate_of_a_builtin_is_skipped_naming_both(site):
    install(site, "txb_dup", '''
        import torch, txblocks

        @txblocks.hookimpl
        def txblocks_register(registry):
            registry.add("norm", "extra_one", lambda dim, config: torch.nn.Identity())
            registry.add("norm", "layernorm", lambda dim, config: torch.nn.Identity())
        ''')
    registry = _load_with_one_warning(
        r"'txb_dup' .*from txb_dup 0\.1\) was skipped: norm 'layernorm' is registered twice: "
        r"by txblocks[ \d.]* and by txb_dup 0\.1")
    assert registry.get("norm", "layernorm").owner.name == "txblocks"
    assert ("norm", "extra_one") not in registry  # what it added before failing is undone
    assert _status(registry, "txb_dup").status == "skipped"


def test_two_plugins_clashing_keep_the_first(site):
    install(site, "txb_twin", GOOD.replace("torch.nn.Identity()", "torch.nn.Tanh()"))
    registry = _load_with_one_warning(
        r"'txb_twin' .*was skipped: norm 'good_norm' is registered twice: by txb_good 0\.1 and "
        r"by txb_twin 0\.1")
    assert registry.get("norm", "good_norm").owner.name == "txb_good"


def test_an_invalid_component_name_is_skipped(site):
    install(site, "txb_badname", GOOD.replace('"good_norm"', '"Bad-Norm"'))
    registry = _load_with_one_warning(r"'txb_badname' .*was skipped: txb_badname 0\.1: invalid "
                                      r"component name 'Bad-Norm'")
    assert "Bad-Norm" not in registry.names("norm")


def test_a_hook_with_wrong_arguments_is_skipped(site):
    install(site, "txb_args", GOOD.replace("def txblocks_register(registry)",
                                           "def txblocks_register(reg)").replace("registry.add", "reg.add"))
    registry = _load_with_one_warning(r"'txb_args' .*was skipped: a hook does not match txblocks' "
                                      r"hookspecs: .*txblocks_register\(reg\).*\{'reg'\}")
    assert _status(registry, "txb_args").status == "skipped"


def test_a_misspelt_hook_is_skipped_with_a_suggestion(site):
    install(site, "txb_typo", GOOD.replace("def txblocks_register", "def txblocks_regsiter"))
    _load_with_one_warning(r"'txb_typo' .*was skipped: it implements unknown hook "
                           r"'txblocks_regsiter'; did you mean 'txblocks_register'\?")


def test_an_optional_hook_from_a_newer_txblocks_is_fine(site, recwarn):
    install(site, "txb_newer", GOOD.replace("good_norm", "newer_norm") + '''
    @txblocks.hookimpl(optionalhook=True)
    def txblocks_from_the_future(registry):
        pass
    ''')
    registry = load_registry()
    assert not [str(w.message) for w in recwarn if issubclass(w.category, TxblocksPluginWarning)]
    assert _status(registry, "txb_newer").status == "loaded"


def test_a_plugin_without_hooks_is_skipped(site):
    install(site, "txb_bare", '''
        def txblocks_register(registry):
            registry.add("norm", "never", lambda dim, config: None)
        ''')
    registry = _load_with_one_warning(r"'txb_bare' .*was skipped: it implements no txblocks "
                                      r"hook: txblocks_register is not decorated with "
                                      r"@txblocks\.hookimpl")
    assert ("norm", "never") not in registry


def test_config_fields_that_shadow_the_base_class_are_refused(site):
    install(site, "txb_shadow", '''
        import warnings
        import torch, txblocks

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydantic's own "shadows an attribute" warning

            class ShadowConfig(txblocks.ComponentConfig):
                build: int = 3
                check: bool = True

        @txblocks.hookimpl
        def txblocks_register(registry):
            registry.add("norm", "shadow", lambda dim, config: torch.nn.Identity(), ShadowConfig)
        ''')
    _load_with_one_warning(r"'txb_shadow' .*was skipped: .*config ShadowConfig of norm 'shadow' "
                           r"declares 'build', 'check', which ComponentConfig uses for its own "
                           r"methods; rename the field")


def test_a_skipped_plugin_has_none_of_its_hooks_called(site):
    install(site, "txb_half", '''
        import txblocks

        CALLS = []

        @txblocks.hookimpl
        def txblocks_register(registry):
            raise RuntimeError("half done")

        @txblocks.hookimpl
        def txblocks_after_build(model, spec):
            CALLS.append(model)
        ''')
    registry = _load_with_one_warning(r"'txb_half' .*raised in txblocks_register and was "
                                      r"skipped: RuntimeError: half done")
    txblocks.build(load_spec(TINY, registry=registry), registry=registry)
    assert importlib.import_module("txb_half_pkg.plugin").CALLS == []


def test_strict_loading_raises_instead(site):
    install(site, "txb_typo", GOOD.replace("def txblocks_register", "def txblocks_regsiter"))
    with pytest.raises(PluginError, match=r"'txb_typo' .*unknown hook 'txblocks_regsiter'"):
        load_registry(strict=True)


# --- plugin_status -------------------------------------------------------------------------


def test_plugin_status_records_each_plugin(site):
    install(site, "txb_broken", 'raise ImportError("needs libfoo")\n', version="2.0")
    with pytest.warns(TxblocksPluginWarning, match="txb_broken"):
        registry = load_registry()
    good, broken = _status(registry, "txb_good"), _status(registry, "txb_broken")
    assert (good.distribution, good.status, good.reason) == ("txb_good 0.1", "loaded", "")
    assert good.components == ("norm/good_norm",) and good.target == "txb_good_pkg.plugin"
    assert broken.status == "skipped" and broken.distribution == "txb_broken 2.0"
    assert broken.reason == "ImportError: needs libfoo"
    assert all(isinstance(s.import_seconds, float) and s.import_seconds >= 0
               for s in plugin_status(registry))
    builtins = plugin_status(registry)[0]
    assert builtins.distribution.startswith("txblocks") and builtins.status == "loaded"
    assert "norm/rmsnorm" in builtins.components


def test_plugin_status_with_autoload_off(site, monkeypatch):
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    registry = load_registry()
    status = _status(registry, "txb_good")
    assert status.status == "disabled" and AUTOLOAD_ENV in status.reason
    assert ("norm", "good_norm") not in registry
    assert str(status) == f"txb_good (txb_good 0.1): disabled: autoload is off ({AUTOLOAD_ENV} is set)"


# --- explicit plugins and Registry.add from Python: errors ------------------------------------


def test_an_explicit_module_without_hooks_is_an_error():
    with pytest.raises(PluginError, match=r"'empty_mod' \(from empty_mod\) was skipped: it "
                                          r"implements no txblocks hook"):
        load_registry(autoload=False, plugins=[_module("empty_mod")])


def test_an_explicit_plugin_that_adds_nothing_warns():
    plugin = _module("quiet_mod", txblocks_register=txblocks.hookimpl(lambda registry: None))
    with pytest.warns(TxblocksPluginWarning, match=r"'quiet_mod' .*loaded, but its "
                                                   r"txblocks_register added no component"):
        registry = load_registry(autoload=False, plugins=[plugin])
    assert _status(registry, "quiet_mod").status == "loaded"


def test_an_explicit_duplicate_is_an_error_naming_both():
    def register(registry):
        registry.add("norm", "rmsnorm", lambda dim, config: torch.nn.Identity())

    plugin = _module("dup_mod", txblocks_register=txblocks.hookimpl(register))
    with pytest.raises(PluginError, match=r"norm 'rmsnorm' is registered twice: by txblocks[ \d.]* "
                                          r"and by dup_mod"):
        load_registry(autoload=False, plugins=[plugin])


def test_registry_add_from_python_still_raises(registry):
    with pytest.raises(RegistryError, match=r"norm 'rmsnorm' is registered twice"):
        registry.add("norm", "rmsnorm", lambda dim, config: torch.nn.Identity())


# --- what a factory builds is checked at build time -------------------------------------------


def _with(kind: str, name: str, factory) -> Registry:
    def register(registry):
        registry.add(kind, name, factory)

    plugin = _module(f"{name}_mod", txblocks_register=txblocks.hookimpl(register))
    return load_registry(autoload=False, plugins=[plugin])


def test_a_factory_returning_none_fails_at_build(site):
    install(site, "txb_none", GOOD.replace("torch.nn.Identity()", "None").replace("good_", "none_"))
    registry = load_registry()
    spec = load_spec({**TINY, "block": {"norm": "none_norm"}}, registry=registry)
    with pytest.raises(BuildError, match=r"^block\.norm: norm 'none_norm' \(from txb_none 0\.1\) is "
                                         r"broken: its factory returned None; norm factories must "
                                         r"return a torch\.nn\.Module"):
        txblocks.build(spec)


def test_a_factory_that_raises_fails_at_build_naming_the_plugin_and_path():
    def boom(dim, config):
        raise KeyError("hidden")

    registry = _with("ffn", "boom", boom)
    spec = load_spec({**TINY, "layers": [{"select": 1, "ffn": "boom"}]}, registry=registry)
    with pytest.raises(BuildError, match=r"^layers\[0\]\.ffn: ffn 'boom' \(from boom_mod\) failed "
                                         r"to build: KeyError: 'hidden'"):
        txblocks.build(spec)


def test_a_factory_returning_the_wrong_type_fails_at_build():
    registry = _with("norm", "tensor", lambda dim, config: torch.ones(dim))
    spec = load_spec({**TINY, "block": {"norm": "tensor"}}, registry=registry)
    with pytest.raises(BuildError, match=r"norm 'tensor' \(from tensor_mod\) is broken: its "
                                         r"factory returned Tensor"):
        txblocks.build(spec)


def test_a_nested_component_error_names_the_nested_path():
    def broken(config):
        raise RuntimeError("no kernel")

    registry = _with("activation", "broken_act", broken)
    spec = load_spec({**TINY, "block": {"ffn": {"type": "mlp", "activation": "broken_act"}}},
                     registry=registry)
    with pytest.raises(BuildError, match=r"^block\.ffn\.activation: activation 'broken_act' "
                                         r"\(from broken_act_mod\) failed to build: RuntimeError"):
        txblocks.build(spec)


def test_a_config_built_outside_a_spec_names_the_component(registry):
    registry.add("norm", "odd", lambda dim, config: "not a module")
    with pytest.raises(BuildError, match=r"^norm 'odd' \(from <python>\) is broken: its factory "
                                         r"returned str"):
        registry.config("norm", "odd").build(8)


def test_config_fields_shadowing_the_base_class_fail_at_add():
    with pytest.warns(UserWarning, match="shadows an attribute"):
        class Shadow(ComponentConfig):
            check: int = 1

    with pytest.raises(RegistryError, match=r"declares 'check', which ComponentConfig uses"):
        Registry().add("norm", "shadow", lambda dim, config: None, Shadow)
