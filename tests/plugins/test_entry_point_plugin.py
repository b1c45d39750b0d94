"""A real entry-point plugin, installed into a temporary directory, end to end.

Each test writes small distributions (a package plus its ``*.dist-info`` with
``METADATA`` and ``entry_points.txt``) under ``tmp_path``, puts that folder on
``sys.path`` and lets ``importlib.metadata`` find them, exactly as it finds a
``pip install``-ed plugin.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest
import torch
from pydantic import BaseModel

import txblocks
from txblocks import (
    ComponentConfig,
    Owner,
    Registry,
    RegistryError,
    SpecError,
    TxblocksPluginWarning,
    cli,
    load_registry,
    load_spec,
)
from txblocks.plugins import AUTOLOAD_ENV, ENTRY_POINT_GROUP, default_registry
from txblocks.testing.listing import listed_rows
from txblocks.spec import json_schema

SCALENORM = '''\
"""ScaleNorm for txblocks: a third-party plugin used by the tests."""

import math

import torch
from pydantic import Field

import txblocks


class ScaleNormConfig(txblocks.ComponentConfig):
    """ScaleNorm (Nguyen & Salazar 2019): g * x / ||x||; eps floors the norm."""

    eps: float = Field(1e-5, gt=0, description="floor of the norm")


class ScaleNorm(torch.nn.Module):
    """ScaleNorm (Nguyen & Salazar 2019): g * x / ||x||, one learned scalar g."""

    def __init__(self, dim, config):
        super().__init__()
        self.eps = config.eps
        self.g = torch.nn.Parameter(torch.tensor(math.sqrt(dim)))

    def forward(self, x):
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(self.eps)


@txblocks.hookimpl
def txblocks_register(registry):
    registry.add("norm", "scalenorm", ScaleNorm, ScaleNormConfig)
'''

TINY = {
    "arch": "decoder", "vocab_size": 64, "max_seq_len": 32, "d_model": 32, "n_layers": 2,
    "n_heads": 4,
}


def install(root: Path, dist: str, version: str, modules: dict[str, str],
            entry_points: dict[str, str]) -> None:
    """Write a distribution ``dist`` with ``modules`` ({'pkg/plugin.py': source}) under ``root``."""
    for relative, source in modules.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        init = path.parent / "__init__.py"
        if not init.exists():
            init.write_text("", encoding="utf-8")
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    info = root / f"{dist}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8"
    )
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}", encoding="utf-8")
    importlib.invalidate_caches()


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path to install distributions into; their modules are forgotten after."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("txb_"):
            del sys.modules[name]
    importlib.invalidate_caches()
    # A default registry loaded while these test distributions were installed (one may
    # override `rmsnorm`) must not serve the tests that come after.
    default_registry.cache_clear()


@pytest.fixture
def scalenorm(site):
    install(site, "txb_scalenorm", "0.1", {"txb_scalenorm/plugin.py": SCALENORM},
            {"scalenorm": "txb_scalenorm.plugin"})
    return site


@pytest.fixture
def fresh_default_registry():
    default_registry.cache_clear()
    yield
    default_registry.cache_clear()


def _squash(text: str) -> str:
    return "".join(text.split())


def _builtin_owner_names(registry: Registry) -> set[str]:
    return {e.owner.name for e in registry.entries()}


# --- the plugin is found, validated, built and listed ----------------------------------------


def test_entry_point_is_found_with_its_distribution(scalenorm):
    registry = load_registry()
    entry = registry.get("norm", "scalenorm")
    assert entry.owner == Owner("txb_scalenorm", "0.1")
    assert str(entry.owner) == "txb_scalenorm 0.1"
    assert entry.description.startswith("ScaleNorm (Nguyen & Salazar 2019)")
    assert ("norm", "scalenorm") in registry and ("norm", "rmsnorm") in registry
    assert registry.get("norm", "rmsnorm").owner.name == "txblocks"


def test_spec_with_the_plugin_validates_builds_and_runs(scalenorm, gen):
    registry = load_registry()
    spec = load_spec({**TINY, "block": {"norm": {"type": "scalenorm", "eps": 1e-6}}},
                     registry=registry)
    assert spec.block.norm.type == "scalenorm" and spec.block.norm.eps == 1e-6
    assert load_spec(spec.to_yaml(), registry=registry) == spec
    model = txblocks.build(spec).eval()
    norm = model.blocks[0].norm1
    assert type(norm).__name__ == "ScaleNorm" and type(norm).__module__ == "txb_scalenorm.plugin"
    assert norm.eps == 1e-6 and math.isclose(norm.g.item(), math.sqrt(32), rel_tol=1e-6)
    assert type(model.final_norm).__name__ == "ScaleNorm"
    x = torch.randn(2, 5, 32, generator=gen)
    expected = math.sqrt(32) * x / x.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(norm(x), expected)
    ids = torch.randint(0, 64, (2, 7), generator=gen)
    with torch.no_grad():
        out = model(ids, attention_mask=torch.ones_like(ids))
    assert out.logits.shape == (2, 7, 64) and torch.isfinite(out.logits).all()
    assert {type(b.norm2).__name__ for b in model.blocks} == {"ScaleNorm"}


def test_the_plugin_works_in_every_norm_slot(scalenorm):
    registry = load_registry()
    spec = load_spec({
        **TINY,
        "embedding": {"norm": "scalenorm"},
        "block": {"attention": {"qk_norm": {"type": "scalenorm", "eps": 1e-4}}},
        "layers": [{"select": "odd", "norm": "scalenorm"}],
        "head": {"type": "mlm", "norm": "scalenorm"},
    }, registry=registry)
    assert spec.embedding.norm.type == spec.head.norm.type == "scalenorm"
    assert spec.block_for(1).norm.type == "scalenorm" and spec.block_for(0).norm.type == "layernorm"
    model = txblocks.build(spec)
    assert type(model.blocks[1].norm1).__name__ == "ScaleNorm"
    assert type(model.blocks[0].norm1).__name__ == "LayerNorm"


def test_plugin_parameters_are_validated_like_builtins(scalenorm):
    registry = load_registry()
    with pytest.raises(SpecError, match=r"(?m)^  block\.norm\.epsilon: unknown field 'epsilon'; "
                                        r"allowed fields: eps, type"):
        load_spec({**TINY, "block": {"norm": {"type": "scalenorm", "epsilon": 1}}},
                  registry=registry)
    with pytest.raises(SpecError, match=r"(?m)^  block\.norm\.eps: input should be greater than 0"):
        load_spec({**TINY, "block": {"norm": {"type": "scalenorm", "eps": 0}}}, registry=registry)
    with pytest.raises(SpecError, match=r"allowed: layernorm, rmsnorm, scalenorm; "
                                        r"did you mean 'scalenorm'\?"):
        load_spec({**TINY, "block": {"norm": "scalenrom"}}, registry=registry)


def test_a_builtins_only_registry_does_not_know_the_plugin(scalenorm, registry):
    assert ("norm", "scalenorm") not in registry
    assert ("norm", "scalenorm") not in load_registry(autoload=False)
    with pytest.raises(SpecError, match=r"block\.norm\.type: unknown type 'scalenorm'"):
        load_spec({**TINY, "block": {"norm": "scalenorm"}}, registry=registry)


def test_cli_list_shows_the_plugin_with_its_owner(scalenorm, capsys, fresh_default_registry):
    assert cli.main(["list", "norm"]) == 0
    table = listed_rows(capsys.readouterr().out)
    assert [row[:2] for row in table] == [["norm", "layernorm"], ["norm", "rmsnorm"],
                                          ["norm", "scalenorm"]]
    owners = {row[1]: _squash(row[2]) for row in table}
    assert owners["scalenorm"] == "txb_scalenorm0.1"
    assert owners["rmsnorm"].startswith("txblocks")
    assert table[2][3].startswith("ScaleNorm")
    assert cli.main(["list", "norm", "scale*"]) == 0
    assert [row[1] for row in listed_rows(capsys.readouterr().out)] == ["scalenorm"]


def test_json_schema_contains_the_plugin(scalenorm, registry):
    schema = json_schema(load_registry())
    model = schema["$defs"]["NormScalenorm"]
    assert model["properties"]["type"]["const"] == "scalenorm"
    assert model["properties"]["eps"]["exclusiveMinimum"] == 0
    assert model["additionalProperties"] is False
    spec = {**TINY, "block": {"norm": {"type": "scalenorm", "eps": 1e-6}}}
    jsonschema.Draft202012Validator(schema).validate(spec)
    builtins_only = jsonschema.Draft202012Validator(json_schema(registry))
    assert "scalenorm" not in json.dumps(json_schema(registry))
    assert not builtins_only.is_valid(spec)
    bad = {**TINY, "block": {"norm": {"type": "scalenorm", "epsilon": 1}}}
    assert not jsonschema.Draft202012Validator(schema).is_valid(bad)


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_autoload_switch_leaves_only_the_builtins(scalenorm, monkeypatch, value):
    monkeypatch.setenv(AUTOLOAD_ENV, value)
    registry = load_registry()
    assert ("norm", "scalenorm") not in registry
    assert _builtin_owner_names(registry) == {"txblocks"}
    assert registry.names("norm") == ["layernorm", "rmsnorm"]


@pytest.mark.parametrize("value", ["0", "", "false"])
def test_autoload_switch_off_values_still_autoload(scalenorm, monkeypatch, value):
    monkeypatch.setenv(AUTOLOAD_ENV, value)
    assert ("norm", "scalenorm") in load_registry()


def test_explicit_plugin_with_autoload_disabled(scalenorm, monkeypatch):
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    module = importlib.import_module("txb_scalenorm.plugin")
    registry = load_registry(plugins=[module])
    assert registry.get("norm", "scalenorm").owner.name == "txb_scalenorm.plugin"
    assert registry.get("norm", "rmsnorm").owner.name == "txblocks"


def test_registries_do_not_share_plugins(scalenorm):
    first, second = load_registry(), load_registry()
    assert first is not second
    first.add("norm", "only_here", lambda dim, config: torch.nn.Identity())
    assert ("norm", "only_here") in first and ("norm", "only_here") not in second


# --- broken plugins ---------------------------------------------------------------------------


def test_a_plugin_that_fails_to_import_is_skipped_with_a_warning(scalenorm):
    install(scalenorm, "txb_broken", "0.2", {
        "txb_broken/plugin.py": 'raise ImportError("needs a library that is not installed")\n',
    }, {"broken": "txb_broken.plugin"})
    with pytest.warns(TxblocksPluginWarning) as record:
        registry = load_registry()
    messages = [str(w.message) for w in record if issubclass(w.category, TxblocksPluginWarning)]
    assert len(messages) == 1
    assert re.search(r"txblocks plugin 'broken' \(txb_broken\.plugin, from txb_broken 0\.2\) "
                     r"failed to load and was skipped: ImportError: needs a library", messages[0])
    assert registry.get("norm", "scalenorm").owner == Owner("txb_scalenorm", "0.1")
    assert "rmsnorm" in registry.names("norm")


def test_a_missing_module_is_skipped_with_a_warning(scalenorm):
    install(scalenorm, "txb_ghost", "1.0", {}, {"ghost": "txb_ghost_does_not_exist.plugin"})
    with pytest.warns(TxblocksPluginWarning, match=r"'ghost'.*txb_ghost 1\.0.*ModuleNotFoundError"):
        registry = load_registry()
    assert ("norm", "scalenorm") in registry


def test_a_duplicate_name_names_both_owners(site):
    install(site, "txb_dup", "0.3", {"txb_dup/plugin.py": '''
        import txblocks
        from txblocks.components.norms import RMSNormConfig

        @txblocks.hookimpl
        def txblocks_register(registry):
            registry.add("norm", "rmsnorm", lambda dim, config: None, RMSNormConfig)
        '''}, {"dup": "txb_dup.plugin"})
    twice = r"norm 'rmsnorm' is registered twice: by txblocks[ \d.]* and by txb_dup 0\.3; "
    # At autoload the offending plugin is skipped with a warning naming both owners.
    with pytest.warns(TxblocksPluginWarning, match=r"'dup' .*was skipped: " + twice + r".*override=True"):
        registry = load_registry()
    assert registry.get("norm", "rmsnorm").owner.name == "txblocks"
    with pytest.raises(txblocks.PluginError, match=twice):
        load_registry(strict=True)


def test_override_replaces_a_builtin(site, gen):
    install(site, "txb_override", "0.4", {"txb_override/plugin.py": '''
        import torch
        import txblocks
        from txblocks.components.norms import RMSNormConfig

        class Halving(torch.nn.Module):
            """Not really a norm: halves its input."""

            def __init__(self, dim, config):
                super().__init__()

            def forward(self, x):
                return x / 2

        @txblocks.hookimpl
        def txblocks_register(registry):
            registry.add("norm", "rmsnorm", Halving, RMSNormConfig, override=True,
                         description="halves its input")
        '''}, {"override": "txb_override.plugin"})
    registry = load_registry()
    entry = registry.get("norm", "rmsnorm")
    assert entry.owner == Owner("txb_override", "0.4")
    assert entry.description == "halves its input" and entry.factory.__name__ == "Halving"
    spec = load_spec({**TINY, "block": {"norm": "rmsnorm"}}, registry=registry)
    model = txblocks.build(spec)
    x = torch.randn(3, 32, generator=gen)
    torch.testing.assert_close(model.blocks[0].norm1(x), x / 2)
    assert registry.names("norm") == ["layernorm", "rmsnorm"]
    assert load_registry(autoload=False).get("norm", "rmsnorm").owner.name == "txblocks"


MIDWAY = '''
    import torch
    import txblocks
    from txblocks.components.norms import RMSNormConfig

    @txblocks.hookimpl
    def txblocks_register(registry):
        registry.add("norm", "halfway", lambda dim, config: torch.nn.Identity())
        registry.add("activation", "halfway_act", lambda config: torch.nn.Identity())
        {extra}
        raise RuntimeError("forgot to finish")
    '''


def test_a_hook_that_raises_midway_leaves_nothing_behind(scalenorm):
    install(scalenorm, "txb_midway", "0.5", {"txb_midway/plugin.py": MIDWAY.format(extra="")},
            {"midway": "txb_midway.plugin"})
    with pytest.warns(TxblocksPluginWarning, match=r"txb_midway.*raised in txblocks_register and "
                                                   r"was skipped: RuntimeError: forgot to finish"):
        registry = load_registry()
    assert ("norm", "halfway") not in registry and ("activation", "halfway_act") not in registry
    assert "halfway" not in registry.names("norm")
    assert registry.get("norm", "scalenorm").owner.name == "txb_scalenorm"
    assert registry.names("norm") == ["layernorm", "rmsnorm", "scalenorm"]
    assert all(e.owner.name != "txb_midway" for e in registry.entries())
    # The union models are built from what remains.
    with pytest.raises(SpecError, match="unknown type 'halfway'"):
        load_spec({**TINY, "block": {"norm": "halfway"}}, registry=registry)


def test_a_hook_that_overrides_then_raises_restores_the_builtin(site):
    extra = ('registry.add("norm", "rmsnorm", lambda dim, config: None, RMSNormConfig, '
             'override=True)')
    install(site, "txb_midway", "0.5", {"txb_midway/plugin.py": MIDWAY.format(extra=extra)},
            {"midway": "txb_midway.plugin"})
    with pytest.warns(TxblocksPluginWarning, match="txb_midway"):
        registry = load_registry()
    assert registry.get("norm", "rmsnorm").owner.name == "txblocks"


# --- Registry on its own ------------------------------------------------------------------


class _Params(ComponentConfig):
    """Parameters of a test component."""

    size: int = 3


def _factory(dim: int, config: _Params) -> torch.nn.Module:
    return torch.nn.Linear(dim, config.size)


@pytest.mark.parametrize("name", ["Scale", "1norm", "scale-norm", "", "scale norm", "_x", "é"])
def test_bad_names_are_refused(name):
    registry = Registry()
    with pytest.raises(RegistryError, match=r"invalid component name .*lowercase letters"):
        registry.add("norm", name, _factory, _Params)
    with pytest.raises(RegistryError, match=r"invalid component kind"):
        registry.add(name, "fine", _factory, _Params)
    assert registry.kinds() == []


def test_non_string_names_are_refused():
    with pytest.raises(RegistryError, match="invalid component name 3"):
        Registry().add("norm", 3, _factory, _Params)  # type: ignore[arg-type]


class _PlainModel(BaseModel):
    size: int = 3


@pytest.mark.parametrize("config", [_PlainModel, dict, _Params(), "size"], ids=["pydantic", "dict",
                                                                                 "instance", "str"])
def test_config_must_be_a_component_config_class(config):
    with pytest.raises(RegistryError,
                       match=r"config of norm 'x' must subclass txblocks\.ComponentConfig"):
        Registry().add("norm", "x", _factory, config)


def test_config_may_not_declare_type():
    class Typed(ComponentConfig):
        type: str = "x"

    with pytest.raises(RegistryError,
                       match=r"declares a 'type' field; the spec adds that tag itself"):
        Registry().add("norm", "x", _factory, Typed)


def test_factory_must_be_callable():
    with pytest.raises(RegistryError, match="factory of norm 'x' is not callable"):
        Registry().add("norm", "x", 42, _Params)  # type: ignore[arg-type]


def test_duplicate_in_one_registry_and_override():
    registry = Registry()
    with registry.owned_by(Owner("first", "1")):
        registry.add("norm", "x", _factory, _Params)
    with registry.owned_by(Owner("second", "2")):
        with pytest.raises(RegistryError,
                           match=r"norm 'x' is registered twice: by first 1 and by second 2"):
            registry.add("norm", "x", _factory, _Params)
        registry.add("norm", "x", _factory, _Params, override=True)
    assert registry.get("norm", "x").owner == Owner("second", "2")


def test_names_with_wildcards(registry):
    assert registry.names("position", "rope*") == ["rope"]
    assert registry.names("position", "r*") == ["relative_bias", "relative_bias_2d", "rope"]
    assert registry.names("activation", "gelu*") == ["gelu", "gelu_tanh"]
    assert registry.names("activation", "*gelu") == ["gelu", "quick_gelu"]
    assert registry.names("mask", "????") == ["none"]
    assert registry.names("norm") == ["layernorm", "rmsnorm"]
    assert registry.names("norm", "x*") == []
    assert registry.names("no_such_kind") == []
    assert [e.name for e in registry.entries("position", "r*")] == ["relative_bias",
                                                                    "relative_bias_2d", "rope"]
    assert {e.kind for e in registry.entries(None, "*norm")} == {"norm"}


def test_get_errors_suggest_names(registry):
    with pytest.raises(RegistryError, match=r"unknown norm 'rmsnrom'; registered: layernorm, "
                                            r"rmsnorm; did you mean 'rmsnorm'\?"):
        registry.get("norm", "rmsnrom")
    with pytest.raises(RegistryError, match=r"unknown component kind 'nrom'; known kinds: "
                                            r"activation, attention, ffn, front_end, head, mask, norm, "
                                            r"position, quantization; did you mean 'norm'\?"):
        registry.get("nrom", "rmsnorm")
    with pytest.raises(RegistryError,
                       match=r"unknown component kind 'norm'; known kinds: \(none\)"):
        Registry().get("norm", "x")


def test_config_builds_components(registry, gen):
    norm = registry.config("norm", "rmsnorm", eps=1e-3).build(8)
    assert isinstance(norm, torch.nn.Module) and norm.eps == 1e-3
    x = torch.randn(2, 8, generator=gen)
    torch.testing.assert_close(norm(x), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-3))
    mlp = registry.config("ffn", "mlp", hidden=16, activation="silu").build(8)
    assert mlp.up.out_features == 16 and isinstance(mlp.act, torch.nn.SiLU)
    assert registry.config("ffn", "glu").activation.type == "silu"
    assert registry.config("mask", "sliding_window", window=4).window == 4


def test_config_of_an_added_component(gen):
    registry = Registry()
    registry.add("proj", "linear", _factory, _Params)
    config = registry.config("proj", "linear", size=5)
    assert config.type == "linear" and config.size == 5
    layer = config.build(4)
    assert isinstance(layer, torch.nn.Linear) and layer.out_features == 5
    with pytest.raises(ValueError, match="size"):
        registry.config("proj", "linear", size="five")
    with pytest.raises(RegistryError, match="unknown component kind 'norm'"):
        registry.config("norm", "linear")


def test_unbound_config_cannot_build():
    with pytest.raises(RegistryError,
                       match=r"_Params is not bound to a registry entry; .*Registry\.config"):
        _Params().build(4)


def test_description_defaults_to_the_first_docstring_line():
    def documented(dim, config):
        """First line.

        More detail.
        """

    class Undocumented(ComponentConfig):
        pass

    registry = Registry()
    assert registry.add("norm", "a", documented, Undocumented).description == "First line."
    assert registry.add("norm", "b", lambda d, c: None, _Params).description == (
        "Parameters of a test component.")
    assert registry.add("norm", "c", documented, _Params, description="mine").description == "mine"
    assert registry.add("norm", "d", lambda d, c: None, Undocumented).description == ""
