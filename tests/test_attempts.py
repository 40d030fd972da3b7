"""Restart counting (cmpl_ray.train.attempts): hand-computed cases for every way a worker group (re)starts."""

from cmpl_ray.train.attempts import AttemptCounter, restarts


def test_counter_numbers_starts_within_one_driver():
    c = AttemptCounter()
    s1, a1 = c.start()
    s2, a2 = c.start()
    assert s1 == s2 and (a1, a2) == (1, 2) and AttemptCounter().session != s1


def test_first_start_without_checkpoint_is_no_restart():
    assert restarts("s", 1, None, False) == 0


def test_crash_before_the_first_checkpoint_is_counted():
    assert restarts("s", 2, None, False) == 1  # a checkpoint-only counter misses this one
    assert restarts("s", 3, None, False) == 2


def test_restart_from_a_checkpoint_of_this_driver():
    extra = {"restarts": 0, "session": "s", "attempt": 1}
    assert restarts("s", 2, extra, True) == 1
    assert restarts("s", 3, {"restarts": 1, "session": "s", "attempt": 2}, True) == 2
    assert restarts("s", 3, extra, True) == 2  # crashed again before the next checkpoint


def test_driver_died_and_the_same_command_resumed():
    extra = {"restarts": 1, "session": "old", "attempt": 2}
    assert restarts("new", 1, extra, True) == 2
    assert restarts("new", 2, extra, True) == 3


def test_user_warm_start_from_another_runs_checkpoint_is_no_fault():
    assert restarts("new", 1, {"restarts": 0, "session": "old", "attempt": 1}, False) == 0
