"""The closed loop's control: listeners whose taste is a consistent but arbitrary number per clip.

They listen and vote decisively, but nothing a model can learn or RL can change moves their votes, so the
loop must end without a promotion: the gate stops the candidate, or the canary is rolled back. Its own file
so that it runs beside the two-round demo (pytest-xdist keeps a file on one worker).
"""

import pytest

from musicrl.rollout.record import Status
from tests.utils.demo import short_demo


pytestmark = pytest.mark.slow


def test_listeners_who_like_nothing_systematically_promote_nothing(tmp_path):
    # less of everything than the two-round demo: nothing here is measured, only that nothing is promoted
    small = {"comparisons": 80, "canary_comparisons": 60, "max_votes": 50, "measure_prompts": 4}
    run = short_demo(tmp_path, taste="random", rounds=1, **small)
    (only,) = run.rounds
    assert not only.promoted, only.rollout
    assert only.rollout is None or only.rollout.status is Status.ROLLED_BACK
