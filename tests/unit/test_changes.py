"""``previous_attributes``: exactly the changed attributes at their prior values, metadata key by key."""

from __future__ import annotations

from payray.changes import previous_attributes


def test_nothing_changed_is_empty() -> None:
    charge = {"id": "ch_1", "description": None, "metadata": {"a": "1"}}
    assert previous_attributes(charge, dict(charge)) == {}


def test_a_changed_field_gives_its_prior_value_and_a_set_one_null() -> None:
    before = {"id": "ch_1", "amount": 500, "description": None, "email": "a@example.com"}
    after = {**before, "description": "gift", "email": None}
    assert previous_attributes(before, after) == {"description": None, "email": "a@example.com"}


def test_metadata_holds_the_changed_and_removed_keys_prior_values_and_null_for_an_added_one() -> None:
    before = {"metadata": {"kept": "1", "changed": "old", "removed": "x"}}
    after = {"metadata": {"kept": "1", "changed": "new", "added": "y"}}
    assert previous_attributes(before, after) == {
        "metadata": {"changed": "old", "removed": "x", "added": None}
    }


def test_emptied_metadata_holds_every_prior_key() -> None:
    assert previous_attributes({"metadata": {"a": "1", "b": "2"}}, {"metadata": {}}) == {
        "metadata": {"a": "1", "b": "2"}
    }


def test_a_list_is_given_whole_and_a_new_attribute_was_null() -> None:
    assert previous_attributes({"tags": [1, 2]}, {"tags": [1, 3], "phone": "1"}) == {
        "tags": [1, 2],
        "phone": None,
    }
