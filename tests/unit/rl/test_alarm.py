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
