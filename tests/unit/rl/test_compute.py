import pytest

from musicrl.errors import InvalidRequest
from musicrl.rl.compute import ComputeConfig


def test_autocast_defaults_to_cuda_only_and_an_explicit_choice_wins():
    assert ComputeConfig().autocast_enabled("cuda") and not ComputeConfig().autocast_enabled("cpu")
    assert ComputeConfig(autocast=True).autocast_enabled("cpu")
    assert not ComputeConfig(autocast=False).autocast_enabled("cuda")


def test_a_non_positive_chunk_is_refused_with_the_field_name():
    with pytest.raises(InvalidRequest, match="compute.chunk_positions must be >= 1"):
        ComputeConfig(chunk_positions=0)
