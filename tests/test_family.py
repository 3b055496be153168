"""The registries (refusing duplicates, loading the built-in families on first use) and the typed import options."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from deploy_nas.dense import ARCHS
from deploy_nas.errors import InvalidSubnetConfig
from deploy_nas.family import FAMILIES, family_of, parse_import_options
from deploy_nas.registry import Registry
from deploy_nas.spaces import PRESETS, SPACES
from deploy_nas.supernets.autoformer import AutoFormerImportOptions


def test_registries_refuse_duplicates_and_list_choices():
    for registry, name in ((FAMILIES, "autoformer"), (SPACES, "autoformer-tiny"), (ARCHS, "vit"),
                           (PRESETS, "autoformer-t")):
        with pytest.raises(ValueError, match="already registered"):
            registry.register(name, registry.get(name))
    with pytest.raises(InvalidSubnetConfig, match="unknown family 'nope'; choose one of: autoformer"):
        FAMILIES.get("nope")


def test_registry_loader_runs_once_before_the_first_lookup():
    calls = []
    registry: Registry[int] = Registry("thing", loader=lambda: (calls.append(1), registry.register("a", 1)))
    assert calls == [] and registry.get("a") == 1 and registry.names() == ["a"] and calls == [1]
    assert registry.unregister("a") == 1 and "a" not in registry and calls == [1]


def test_the_registry_alone_finds_the_builtin_families():
    code = ("from deploy_nas.family import FAMILIES; from deploy_nas.spaces import SPACES\n"
            "print(sorted(FAMILIES.names()), SPACES.get('autoformer-tiny').family)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['autoformer', 'nasvit', 'psvit', 's3', 'vitslim'] autoformer"


def test_family_of_any_object_with_a_family_name():
    assert family_of(SPACES.get("autoformer-T")) is FAMILIES.get("autoformer")
    with pytest.raises(InvalidSubnetConfig, match="belongs to no family"):
        family_of(object())


@pytest.mark.parametrize("pairs, given, expected", [
    ((), {}, AutoFormerImportOptions()),
    (("change_qkv=false", "gp=0"), {}, AutoFormerImportOptions(change_qkv=False, gp=False)),
    (("pre-norm=off", "head_dim=32"), {}, AutoFormerImportOptions(pre_norm=False, head_dim=32)),
    (("head_dim=none",), {"gp": False}, AutoFormerImportOptions(gp=False)),
    ((), {"gp": None, "pre_norm": True}, AutoFormerImportOptions()),
])
def test_import_options_parse_into_the_typed_dataclass(pairs, given, expected):
    assert parse_import_options(AutoFormerImportOptions, pairs, **given) == expected


@pytest.mark.parametrize("pairs, match", [
    (("window=7",), r"key one of change_qkv, gp, pre_norm, head_dim"),
    (("gp",), r"expected key=value"),
    (("gp=maybe",), r"gp='maybe': not a valid bool \(expected true or false\)"),
    (("head_dim=1e9",), r"head_dim='1e9': not a valid int"),
    (("gp=true", "gp=false"), r"import option gp given twice, as True and as False"),
])
def test_bad_import_options_name_key_and_value(pairs, match):
    with pytest.raises(InvalidSubnetConfig, match=match):
        parse_import_options(AutoFormerImportOptions, pairs)


def test_an_import_option_and_its_flag_must_agree():
    with pytest.raises(InvalidSubnetConfig, match=r"change_qkv given twice.*--change-qkv flag counts too"):
        parse_import_options(AutoFormerImportOptions, ("change_qkv=true",), change_qkv=False)
    same = parse_import_options(AutoFormerImportOptions, ("change_qkv=false", "change_qkv=0"), change_qkv=False)
    assert same == AutoFormerImportOptions(change_qkv=False)


def test_import_options_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        AutoFormerImportOptions().gp = False  # type: ignore[misc]
