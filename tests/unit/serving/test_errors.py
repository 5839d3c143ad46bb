"""The model servers carry each platform error with the status of the one map in musicrl.errors.

KServe's gRPC protos and tritonclient's share the package name ``inference``, so a pytest process that
has imported tritonclient.grpc (the integration tests do) cannot import KServe: the check runs in a
fresh interpreter.
"""

import subprocess
import sys

from musicrl import errors


CHECK = """
from musicrl import errors
from musicrl.serving.errors import RetryLater, to_kserve_error
from musicrl.serving.kserve_compat import kserve

cases = [
    (errors.InvalidRequest("bad"), kserve.errors.InvalidInput),
    (errors.IdempotencyKeyReused("reused"), kserve.errors.InvalidInput),
    (errors.ModelNotFound("none"), kserve.errors.ModelNotFound),
    (errors.ModelNotReady("loading"), RetryLater),
    (errors.UpstreamUnavailable("reward service down"), RetryLater),
    (errors.Overloaded("full", retry_after_s=3.2), RetryLater),
    (errors.MusicRLError("other"), kserve.errors.InferenceError),
]
for error, expected in cases:
    converted = to_kserve_error(error, "generator")
    assert type(converted) is expected, (error, converted)
    assert expected is kserve.errors.ModelNotFound or str(error) in str(converted), (error, converted)
assert issubclass(RetryLater, kserve.errors.ServerNotReady)  # gRPC: still UNAVAILABLE
assert to_kserve_error(errors.Overloaded("full", retry_after_s=3.2), "g").headers == {"Retry-After": "3"}
print("ok", len(cases))
"""


def test_each_error_becomes_the_kserve_error_with_its_status():
    # UpstreamUnavailable was a 500 (InferenceError) on the model servers before the map was shared
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "7"]


def test_every_platform_error_has_a_status_and_only_retriable_ones_a_retry_after():
    for kind in (errors.Conflict, errors.RateLimited, errors.Overloaded):
        assert errors.retry_after_header(kind("x", 2.4)) == {"Retry-After": "2"}
    assert errors.retry_after_header(errors.IdempotencyKeyReused("x")) == {}
    assert errors.http_status(errors.UpstreamUnavailable("x")) == 503
    assert errors.http_status(ValueError("not ours")) == 500
