"""broker.toml: the example config loads; every new key is checked, and a bad value is one clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jit_ssh.broker.config import BrokerConfig
from jit_ssh.ca import ConfigError

EXAMPLE = Path(__file__).resolve().parents[3] / "configs" / "broker.toml"


def test_the_example_config_loads() -> None:
    config = BrokerConfig.load(EXAMPLE)
    assert (config.index_workers, config.index_cpu_budget, config.index_memory) == (1, 120, 1024 * 1024 * 1024)
    assert config.env_allow == frozenset()
    assert config.sessions_per_user == 32


def test_the_defaults_without_a_file() -> None:
    config = BrokerConfig.from_mapping({}, path=None)
    assert config.index_workers == 1
    assert config.sessions_per_user == 32


def test_sessions_per_user_can_be_raised_for_automation() -> None:
    config = BrokerConfig.from_mapping({"broker": {"sessions_per_user": 2000}}, path=None)
    assert config.sessions_per_user == 2000
    assert config.env_allow == frozenset()


def test_allowed_environment_names() -> None:
    config = BrokerConfig.from_mapping({"broker": {"env_allow": ["GIT_PROTOCOL", "TZ"]}}, path=None)
    assert config.env_allow == frozenset({"GIT_PROTOCOL", "TZ"})


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ({"env_allow": "GIT_PROTOCOL"}, "env_allow"),
        ({"env_allow": ["git protocol"]}, "env_allow"),
        ({"env_allow": ["LD_PRELOAD"]}, "env_allow"),  # changes how programs on the host start: never
        ({"env_allow": ["BASH_ENV"]}, "env_allow"),
        ({"env_allow": ["PATH"]}, "env_allow"),
        ({"env_allow": [1]}, "env_allow"),
        ({"index_workers": 0}, "index_workers"),
        ({"index_workers": 17}, "index_workers"),
        ({"index_workers": "2"}, "index_workers"),
        ({"index_workers": True}, "index_workers"),
        ({"index_cpu_budget": "0s"}, "index_cpu_budget"),
        ({"index_cpu_budget": "2 days"}, "index_cpu_budget"),
        ({"index_cpu_budget": 60}, "index_cpu_budget"),
        ({"index_memory": 100}, "index_memory"),
        ({"index_memory": "1GiB"}, "index_memory"),
        ({"sessions_per_user": 0}, "sessions_per_user"),
        ({"sessions_per_user": 100_001}, "sessions_per_user"),
        ({"sessions_per_user": "64"}, "sessions_per_user"),
        ({"sessions_per_user": True}, "sessions_per_user"),
    ],
)
def test_bad_values_are_refused_naming_the_key(table: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as caught:
        BrokerConfig.from_mapping({"broker": table}, path=None)
    assert "\n" not in caught.value.message
