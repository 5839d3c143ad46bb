import pytest

from musicrl.rl.alarm import OverOptimisationAlarm


def test_the_alarm_waits_for_a_full_window_then_fires_on_a_drop_from_the_best_window():
    alarm = OverOptimisationAlarm(window=3, max_drop=0.1)
    values = [0.5, 0.6, 0.7, 0.7, 0.65, 0.6, 0.52, 0.4]
    fired = [alarm.update(step, value) for step, value in enumerate(values, start=1)]
    # window means from step 3: 0.60, 0.667, 0.683 (best), 0.65, 0.59 (drop 0.093), 0.507 (drop 0.177: fires)
    assert fired == [False, False, False, False, False, False, False, True]
    assert alarm.improved_at == 5 and abs(alarm.best_mean - 0.6833) < 1e-3


def test_a_rising_held_out_reward_never_fires():
    alarm = OverOptimisationAlarm(window=2, max_drop=0.01)
    assert not any(alarm.update(step, step / 10) for step in range(1, 20))
    assert alarm.improved_at == 19


def test_the_alarm_fires_once_per_drop_not_on_every_step_of_it():
    alarm = OverOptimisationAlarm(window=2, max_drop=0.1)
    values = [1.0, 1.0, 0.5, 0.4, 0.3, 0.2, 1.0, 1.0, 0.5, 0.5]  # a drop, a recovery, a second drop
    fired = [step for step, v in enumerate(values, start=1) if alarm.update(step, v)]
    assert fired == [3, 9]  # the two transitions into a drop: the second after the alarm re-armed
    assert alarm.dropped


def test_a_restored_alarm_continues_the_same_comparisons():
    values = [0.2, 0.5, 0.9, 0.8, 0.4, 0.3, 0.2]
    whole = OverOptimisationAlarm(window=3, max_drop=0.2)
    expected = [whole.update(s, v) for s, v in enumerate(values, start=1)]
    first = OverOptimisationAlarm(window=3, max_drop=0.2)
    for step, value in enumerate(values[:4], start=1):
        first.update(step, value)
    resumed = OverOptimisationAlarm(window=3, max_drop=0.2)
    resumed.load_state_dict(first.state_dict())
    assert [resumed.update(s, v) for s, v in enumerate(values[4:], start=5)] == expected[4:]
    assert resumed.state_dict() == whole.state_dict()


@pytest.mark.parametrize("window, max_drop", [(0, 0.1), (3, -0.1), (3, float("nan"))])
def test_a_meaningless_alarm_is_refused(window, max_drop):
    with pytest.raises(ValueError, match="window >= 1 and max_drop >= 0"):
        OverOptimisationAlarm(window=window, max_drop=max_drop)
