"""One registry of family names (`domainvlm.families`): the random-model builders, the
tiny-model factory and its command offer exactly its families; each tiny model loads as its
entry (tests/test_loading.py)."""

from __future__ import annotations

import pytest

from domainvlm.cli import TinyFamily
from domainvlm.families import GENERIC_PATH_FAMILIES, family_names, known_family_names
from domainvlm.models.random_init import BUILDERS, write_random_model
from domainvlm.tiny import FAMILIES as TINY_FAMILIES


def test_the_builders_build_exactly_the_registry_families():
    assert sorted(BUILDERS) == sorted(known_family_names())


def test_the_tiny_factory_and_its_command_offer_the_registry_families():
    assert list(TINY_FAMILIES) == known_family_names()
    assert [choice.value for choice in TinyFamily] == known_family_names()


def test_a_generic_path_family_has_no_table_entry():
    assert GENERIC_PATH_FAMILIES
    assert not set(GENERIC_PATH_FAMILIES) & set(family_names())
    assert len(set(known_family_names())) == len(known_family_names())


def test_an_unknown_family_is_refused_with_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown model family 'nope'; valid families: llava,"):
        write_random_model("nope", tmp_path / "m")
    assert not (tmp_path / "m").exists()
