"""The restart ledger on real actors: Ray's restarts are read and counted, a process past its
allowance (or killed for good) is named in a RestartLimitError, and restarts the run makes
itself are bounded the same way."""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray

from monolith_ray.config import ConfigError, SupervisionConfig, load_config
from monolith_ray.supervision import RestartLimitError, Supervisor, actor_options, actor_state


class _Worker:
    def pid(self) -> int:
        return os.getpid()


def _wait_state(handle, states: set[str], timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = actor_state(handle)
        if record.get("State") in states:
            return record
        time.sleep(0.2)
    raise AssertionError(f"actor never reached {states}: {actor_state(handle)}")


def test_ray_restarts_are_counted_and_the_last_one_is_named(ray_session, caplog) -> None:
    cfg = SupervisionConfig(max_restarts=1)
    actor = ray.remote(_Worker).options(num_cpus=0, **actor_options(cfg)).remote()
    supervisor = Supervisor(cfg)
    supervisor.watch("worker", actor)
    assert supervisor.check() == {"worker": 0}

    os.kill(ray.get(actor.pid.remote()), signal.SIGKILL)
    pid = ray.get(actor.pid.remote(), timeout=60)  # retried on the restarted process
    with caplog.at_level("WARNING", logger="monolith_ray.supervision"):
        assert supervisor.check() == {"worker": 1}
    assert "worker was restarted by Ray (restart 1 of 1 allowed)" in caplog.text

    os.kill(pid, signal.SIGKILL)  # past the allowance: Ray lets it die
    _wait_state(actor, {"DEAD"})
    with pytest.raises(RestartLimitError, match=r"worker died for good after 1 restart"):
        supervisor.check()


def test_restarts_made_by_the_run_are_bounded() -> None:
    supervisor = Supervisor(SupervisionConfig(max_restarts=2))
    assert supervisor.restarted("trainers", "first") == 1
    assert supervisor.restarted("trainers", RuntimeError("second")) == 2
    with pytest.raises(RestartLimitError, match=r"trainers failed 3 times, more than "
                                                 r"supervision.max_restarts=2; last cause: x"):
        supervisor.restarted("trainers", "x")
    unlimited = Supervisor(SupervisionConfig(max_restarts=-1))
    for _ in range(50):
        unlimited.restarted("trainers", "again")
    assert unlimited.counts() == {"trainers": 50}


def test_restarts_that_follow_each_other_back_off_until_a_quiet_spell() -> None:
    now = [0.0]
    supervisor = Supervisor(SupervisionConfig(max_restarts=-1, backoff_s=1.0,
                                              max_backoff_s=5.0, backoff_reset_s=100.0),
                            clock=lambda: now[0])
    assert supervisor.backoff_s("stream") == 0.0  # never restarted
    pauses = []
    for _ in range(6):
        supervisor.restarted("stream", "crash")
        pauses.append(supervisor.backoff_s("stream"))
        now[0] += 10.0 + pauses[-1]
    assert pauses == [0.0, 1.0, 2.0, 4.0, 5.0, 5.0]  # at once, then doubling to the cap
    supervisor.restarted("trainers", "crash")  # each process its own streak
    assert supervisor.backoff_s("trainers") == 0.0
    now[0] += 100.5  # past backoff_reset_s since the last: a new streak
    supervisor.restarted("stream", "crash")
    assert supervisor.backoff_s("stream") == 0.0
    now[0] += 99.0
    supervisor.restarted("stream", "crash")
    assert supervisor.backoff_s("stream") == 1.0
    assert supervisor.counts() == {"stream": 8, "trainers": 1}


def test_config_refuses_bad_values_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="supervision.max_restarts"):
        load_config(overrides=["supervision.max_restarts=-2"])
    with pytest.raises(ConfigError, match="supervision.check_every_s"):
        load_config(overrides=["supervision.check_every_s=0"])
    with pytest.raises(ConfigError, match="supervision.backoff_s"):
        load_config(overrides=["supervision.backoff_s=-1"])
    with pytest.raises(ConfigError, match="supervision.max_backoff_s"):
        load_config(overrides=["supervision.backoff_s=10", "supervision.max_backoff_s=5"])
    with pytest.raises(ConfigError, match="supervision.backoff_reset_s"):
        load_config(overrides=["supervision.backoff_reset_s=0"])
