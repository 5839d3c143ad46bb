"""The InferenceService merge patches: exact bodies in both modes, the schema they must fit, RFC 7386 semantics."""

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from musicrl.errors import Conflict, InvalidRequest, NotFound
from musicrl.rollout import isvc_patches as patches


STABLE_URI = "s3://models/policy/v3"
CANARY_URI = "s3://models/policy/v4"


def standard_isvc() -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": "generator",
            "namespace": "musicrl",
            "resourceVersion": "41",
            "annotations": {"serving.kserve.io/deploymentMode": "Standard"},
        },
        "spec": {
            "predictor": {
                "minReplicas": 2,
                "maxReplicas": 4,
                "scaleTarget": 3,
                "nodeSelector": {"musicrl.io/pool": "gpu"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "model": {
                    "modelFormat": {"name": "musicgen"},
                    "runtime": "musicrl-generator",
                    "storageUri": STABLE_URI,
                    "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "16Gi"}},
                },
            }
        },
    }


def serverless_isvc() -> dict[str, Any]:
    isvc = standard_isvc()
    isvc["metadata"]["annotations"] = {"serving.kserve.io/deploymentMode": "Serverless"}
    isvc["status"] = {"components": {"predictor": {"latestCreatedRevision": "generator-predictor-00003"}}}
    return isvc


def applied(isvc: dict[str, Any], patch: dict[str, Any] | None) -> dict[str, Any]:
    """The object after the patch, with a new resourceVersion as the API server would give it."""
    assert patch is not None
    result = patches.apply_merge_patch(isvc, patch)
    result["metadata"]["resourceVersion"] = str(int(isvc["metadata"]["resourceVersion"]) + 1)
    return result


def assert_fits(isvc: dict[str, Any], patch: dict[str, Any] | None) -> None:
    assert patch is not None
    patches.validate_patch(patch)
    patches.check_patch(isvc, patch)


# --- the schema -------------------------------------------------------------------------------------------------


def test_both_schemas_are_valid_draft_2020_12_and_the_shipped_file_is_what_loads():
    Draft202012Validator.check_schema(patches.isvc_schema())
    Draft202012Validator.check_schema(patches.patch_schema())
    assert patches.isvc_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    patches.validate_isvc(standard_isvc())


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda c: c.update(trafficPercent=150), r"\$\.spec\.canary\[0\]\.trafficPercent"),
        (lambda c: c.update(trafficPercent="20"), r"\$\.spec\.canary\[0\]\.trafficPercent"),
        (lambda c: c.update(trafficPercent=-1), r"\$\.spec\.canary\[0\]\.trafficPercent"),
        (lambda c: c["predictor"]["model"].pop("storageUri"), r"\$\.spec\.canary\[0\]\.predictor\.model"),
        (lambda c: c["predictor"].pop("name"), r"\$\.spec\.canary\[0\]\.predictor"),
        (lambda c: c["predictor"].update(name="V4_bad"), r"\$\.spec\.canary\[0\]\.predictor\.name"),
        (lambda c: c.update(name="v4"), r"\$\.spec\.canary\[0\]"),  # CanarySpec holds exactly two fields
    ],
)
def test_a_canary_entry_with_an_invalid_value_fails_the_patch_schema(mutate, where):
    patch = patches.standard_start_patch(
        standard_isvc(), name="v4", model_uri=CANARY_URI, traffic_percent=10, replicas=1
    )
    assert patch is not None
    patches.validate_patch(patch)  # the unaltered patch fits, so the failure below is the mutation's
    mutate(patch["spec"]["canary"][0])
    with pytest.raises(InvalidRequest, match=rf"the merge patch does not fit the InferenceService schema at {where}"):
        patches.validate_patch(patch)


@pytest.mark.parametrize("percent", [150, "20", 12.5])
def test_a_serverless_traffic_percent_must_be_an_integer_from_0_to_100(percent):
    with pytest.raises(InvalidRequest, match=r"at \$\.spec\.predictor\.canaryTrafficPercent"):
        patches.validate_patch({"spec": {"predictor": {"canaryTrafficPercent": percent}}})


def test_a_partial_patch_fits_the_patch_variant_but_one_that_removes_a_required_field_fails_after_applying():
    isvc = standard_isvc()
    patches.validate_patch({"spec": {"predictor": {"model": {"storageUri": CANARY_URI}}}})  # no modelFormat: fine
    removal = {"metadata": {"resourceVersion": "41"}, "spec": {"predictor": {"model": {"storageUri": None}}}}
    patches.validate_patch(removal)  # null removes a key, which the patch variant allows ...
    with pytest.raises(InvalidRequest, match=r"generator after the patch does not fit .* 'storageUri' is a required"):
        patches.check_patch(isvc, removal)  # ... but the object it leaves lacks its model URI
    with pytest.raises(InvalidRequest, match=r"storageUri"):
        patches.validate_isvc(patches.apply_merge_patch(isvc, removal))


# --- Standard mode ----------------------------------------------------------------------------------------------


def test_standard_start_copies_the_stable_predictor_with_the_canary_model_minus_what_kserve_refuses():
    isvc = standard_isvc()
    patch = patches.standard_start_patch(isvc, name="v4", model_uri=CANARY_URI, traffic_percent=10, replicas=1)
    stable = isvc["spec"]["predictor"]
    canary_predictor = {
        "name": "v4",
        "minReplicas": 1,
        "nodeSelector": stable["nodeSelector"],
        "tolerations": stable["tolerations"],
        "model": {**stable["model"], "storageUri": CANARY_URI},
    }
    assert patch == {
        "metadata": {"resourceVersion": "41"},
        "spec": {"canary": [{"trafficPercent": 10, "predictor": canary_predictor}]},
    }
    assert isvc == standard_isvc()  # the caller's object is not touched
    assert_fits(isvc, patch)


def test_standard_promote_replaces_the_predictor_keeping_the_stable_scaling_and_nulling_what_the_canary_lacks():
    isvc = standard_isvc()
    isvc["spec"]["predictor"]["name"] = "v3"
    isvc["spec"]["predictor"]["workerSpec"] = {"pipelineParallelSize": 2}  # canaries may not run multi-node
    started = applied(
        isvc, patches.standard_start_patch(isvc, name="v4", model_uri=CANARY_URI, traffic_percent=10, replicas=1)
    )
    del started["spec"]["canary"][0]["predictor"]["model"]["runtime"]  # edited by hand while it ran
    patch, name = patches.standard_promote_patch(started, model_uri=CANARY_URI)
    assert name == "v4"
    assert patch == {
        "metadata": {"resourceVersion": "42"},
        "spec": {
            "predictor": {"name": "v4", "workerSpec": None, "model": {"runtime": None, "storageUri": CANARY_URI}},
            "canary": [],
        },
    }
    assert_fits(started, patch)
    promoted = applied(started, patch)
    assert promoted["spec"]["predictor"] == {
        **{k: v for k, v in isvc["spec"]["predictor"].items() if k != "workerSpec"},
        "name": "v4",
        "model": {"modelFormat": {"name": "musicgen"}, "storageUri": CANARY_URI, "resources": stable_resources()},
    }
    assert patches.standard_promote_patch(promoted, model_uri=CANARY_URI) == (None, "v4")  # a repeat does nothing


def stable_resources() -> dict[str, Any]:
    return standard_isvc()["spec"]["predictor"]["model"]["resources"]


def test_standard_rollback_empties_spec_canary_and_a_repeat_does_nothing():
    isvc = standard_isvc()
    started = applied(
        isvc, patches.standard_start_patch(isvc, name="v4", model_uri=CANARY_URI, traffic_percent=0, replicas=1)
    )
    patch = patches.standard_rollback_patch(started, model_uri=CANARY_URI)
    assert patch == {"metadata": {"resourceVersion": "42"}, "spec": {"canary": []}}
    assert_fits(started, patch)
    rolled_back = applied(started, patch)
    assert patches.standard_rollback_patch(rolled_back, model_uri=CANARY_URI) is None
    assert patches.canary_in_flight(rolled_back) is None


def test_standard_start_is_idempotent_and_refuses_a_second_canary_over_a_running_one():
    isvc = standard_isvc()
    started = applied(
        isvc, patches.standard_start_patch(isvc, name="v4", model_uri=CANARY_URI, traffic_percent=10, replicas=1)
    )
    assert (
        patches.standard_start_patch(started, name="v4", model_uri=CANARY_URI, traffic_percent=10, replicas=1) is None
    )
    with pytest.raises(Conflict, match=r"already runs the canary 'v4' in spec\.canary.*KServe issue 2130"):
        patches.standard_start_patch(
            started, name="v5", model_uri="s3://models/policy/v5", traffic_percent=10, replicas=1
        )


def test_standard_start_refuses_what_kserve_would():
    isvc = standard_isvc()
    with pytest.raises(InvalidRequest, match=r"canary_replicas=3 exceeds the stable predictor's minReplicas \(2\)"):
        patches.standard_start_patch(isvc, name="v4", model_uri=CANARY_URI, traffic_percent=10, replicas=3)
    with pytest.raises(InvalidRequest, match=r"already serves s3://models/policy/v3: a canary needs another model"):
        patches.standard_start_patch(isvc, name="v4", model_uri=STABLE_URI, traffic_percent=10, replicas=1)
    with pytest.raises(NotFound, match=r"has no canary serving s3://models/policy/v4 to promote"):
        patches.standard_promote_patch(isvc, model_uri=CANARY_URI)


# --- Serverless mode --------------------------------------------------------------------------------------------


def test_serverless_start_sets_the_model_traffic_share_and_tag_routing_and_records_the_stable_revision():
    isvc = serverless_isvc()
    patch = patches.serverless_start_patch(isvc, model_uri=CANARY_URI, traffic_percent=20)
    record = {"baseRevision": "generator-predictor-00003", "stableStorageUri": STABLE_URI, "state": "canary"}
    assert patch == {
        "metadata": {
            "annotations": {
                "serving.kserve.io/enable-tag-routing": "true",
                "musicrl.io/rollout": json.dumps(record, sort_keys=True),
            },
            "resourceVersion": "41",
        },
        "spec": {"predictor": {"canaryTrafficPercent": 20, "model": {"storageUri": CANARY_URI}}},
    }
    assert_fits(isvc, patch)
    started = applied(isvc, patch)
    assert patches.serverless_start_patch(started, model_uri=CANARY_URI, traffic_percent=20) is None
    with pytest.raises(Conflict, match=r"canaryTrafficPercent=20.*KServe issue 2130"):
        patches.ensure_idle(started)


def test_serverless_promote_removes_the_traffic_percent_and_a_repeat_does_nothing():
    isvc = serverless_isvc()
    started = applied(isvc, patches.serverless_start_patch(isvc, model_uri=CANARY_URI, traffic_percent=20))
    patch = patches.serverless_promote_patch(started, model_uri=CANARY_URI)
    assert patch == {"metadata": {"resourceVersion": "42"}, "spec": {"predictor": {"canaryTrafficPercent": None}}}
    assert_fits(started, patch)
    promoted = applied(started, patch)
    assert "canaryTrafficPercent" not in promoted["spec"]["predictor"]
    assert patches.serverless_promote_patch(promoted, model_uri=CANARY_URI) is None
    assert patches.canary_in_flight(promoted) is None


def test_serverless_rollback_pins_traffic_to_the_stable_revision_and_leaves_the_predictor_idle():
    isvc = serverless_isvc()
    started = applied(isvc, patches.serverless_start_patch(isvc, model_uri=CANARY_URI, traffic_percent=20))
    patch = patches.serverless_rollback_patch(started, model_uri=CANARY_URI, stable_uri="unused: recorded at start")
    record = {"baseRevision": "generator-predictor-00003", "stableStorageUri": STABLE_URI, "state": "rolled-back"}
    assert patch == {
        "metadata": {
            "annotations": {"musicrl.io/rollout": json.dumps(record, sort_keys=True)},
            "resourceVersion": "42",
        },
        "spec": {"predictor": {"canaryTrafficPercent": 0, "model": {"storageUri": STABLE_URI}}},
    }
    assert_fits(started, patch)
    rolled_back = applied(started, patch)
    assert patches.serverless_rollback_patch(rolled_back, model_uri=CANARY_URI, stable_uri=STABLE_URI) is None
    assert patches.canary_in_flight(rolled_back) is None  # pinned by us, stable model restored: a new one may start
    # pinned at 0 % by someone else (no record of ours): a canary is in flight
    foreign = copy.deepcopy(rolled_back)
    del foreign["metadata"]["annotations"]["musicrl.io/rollout"]
    assert "canaryTrafficPercent=0" in (patches.canary_in_flight(foreign) or "")


# --- RFC 7386 ---------------------------------------------------------------------------------------------------

# RFC 7386 Appendix A: (original, patch, result)
RFC_7386_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize("original, patch, result", RFC_7386_EXAMPLES)
def test_apply_merge_patch_follows_the_rfc_examples(original, patch, result):
    before = copy.deepcopy(original)
    assert patches.apply_merge_patch(original, patch) == result
    assert original == before


@pytest.mark.parametrize(
    "old, new",
    [
        ({"a": {"b": {"c": 1, "d": 2}}, "e": 3}, {"a": {"b": {"c": 1}}}),  # nested removal, sibling removal
        ({"a": {"b": 1}}, {"a": {}}),  # an object emptied, not removed
        ({"a": [1, 2, 3]}, {"a": [1, 2]}),  # arrays are replaced whole
        ({"a": 1}, {"a": {"b": [{"c": 2}]}}),  # a scalar becomes an object
        ({"a": {"b": 1}}, {"a": "x"}),  # an object becomes a scalar
    ],
)
def test_merge_patch_round_trips_including_nested_removals(old, new):
    patch = patches.merge_patch(old, new)
    assert patches.apply_merge_patch(old, patch) == new
    assert patches.merge_patch(new, new) == {}


json_values = st.recursive(
    st.integers(-3, 3) | st.text("ab", max_size=2) | st.booleans(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abcd"), inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.sampled_from("abcd"), json_values, max_size=4)


@settings(max_examples=300, deadline=None)
@given(json_objects, json_objects)
def test_merge_patch_round_trips_for_any_documents_without_nulls(old, new):
    assert patches.apply_merge_patch(old, patches.merge_patch(old, new)) == new


def test_merge_patch_refuses_a_null_it_cannot_express():
    with pytest.raises(InvalidRequest, match="cannot set a null value"):
        patches.merge_patch({"a": 1}, {"a": {"b": None}})


# --- names ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rollout_id", ["rollout-7", "R_42", "2026-01-01T00:00:00Z", "x" * 200, ""])
def test_canary_names_are_dns_labels_that_fit_the_service_name(rollout_id):
    name = patches.canary_name(rollout_id, "generator")
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)
    assert len(f"generator-{name}-predictor") <= 63
    assert patches.canary_name(rollout_id, "generator") == name  # a retry finds the same resources


def test_long_rollout_ids_keep_distinct_names():
    assert patches.canary_name("x" * 100 + "1", "generator") != patches.canary_name("x" * 100 + "2", "generator")
    with pytest.raises(InvalidRequest, match="too long to name canaries"):
        patches.canary_name("r1", "g" * 50)
