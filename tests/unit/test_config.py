"""Settings: defaults, file and environment overrides, and errors that name the key."""

from pathlib import Path

import pytest

from citycard.config.settings import load_settings
from citycard.errors import ConfigError


def test_defaults_load_and_fare_table_is_shipped():
    s = load_settings(env={})
    assert s.city.account_shards >= 1
    assert s.fare_table_path().is_file()
    assert len(s.city.master_key) == 32
    assert s.database.url == "" and s.redis.url == ""  # embedded unless configured


def test_named_and_nested_environment_variables_override():
    s = load_settings(env={
        "CITYCARD_DATABASE_URL": "postgresql://db/x",
        "CITYCARD_REDIS_URL": "redis://r:6379/1",
        "RAY_ADDRESS": "auto",
        "CITYCARD_GATEWAY__PORT": "7811",
        "CITYCARD_CITY__ACCOUNT_SHARDS": "8",
    })
    assert (s.database.url, s.redis.url, s.ray.address) == ("postgresql://db/x", "redis://r:6379/1", "auto")
    assert s.gateway.port == 7811 and s.city.account_shards == 8


def test_toml_file_overrides_defaults(tmp_path: Path):
    f = tmp_path / "city.toml"
    f.write_text('[city]\nname = "Ningbo"\n[gateway]\nlinger_ms = 2.5\n')
    s = load_settings(f, env={})
    assert s.city.name == "Ningbo" and s.gateway.linger_ms == 2.5
    assert s.gateway.port == 7700  # untouched keys keep their defaults


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"CITYCARD_GATEWAY__PORT": "99999"}, "gateway.port"),
        ({"CITYCARD_GATEWAY__PORT": "seven"}, "gateway.port"),
        ({"CITYCARD_CITY__ACCOUNT_SHARDS": "0"}, "city.account_shards"),
        ({"CITYCARD_CITY__MASTER_KEY_HEX": "zz"}, "city.master_key_hex"),
        ({"CITYCARD_CITY__MASTER_KEY_HEX": "00ff"}, "city.master_key_hex"),
        ({"CITYCARD_DATABASE__SCHEMA": "Robert'); DROP"}, "database.schema"),
        ({"CITYCARD_GATEWAY__PORTS": "1"}, "gateway.ports"),
    ],
)
def test_bad_values_stop_start_up_naming_the_key(env, key):
    with pytest.raises(ConfigError) as err:
        load_settings(env=env)
    assert key in str(err.value)


def test_bad_toml_names_the_file_and_line(tmp_path: Path):
    f = tmp_path / "broken.toml"
    f.write_text("[city]\nname = \n")
    with pytest.raises(ConfigError) as err:
        load_settings(f, env={})
    assert "broken.toml" in str(err.value) and "line 2" in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", env={})


def test_shard_call_timeout_must_cover_two_commits():
    with pytest.raises(ConfigError, match=r"gateway.shard_call_timeout_ms \(9000\) must be at least twice"):
        load_settings(env={}, overrides={"gateway": {"shard_call_timeout_ms": 9000},
                                         "ledger": {"commit_timeout_ms": 5000}})
    ok = load_settings(env={}, overrides={"gateway": {"shard_call_timeout_ms": 10_000},
                                          "ledger": {"commit_timeout_ms": 5000}})
    assert ok.gateway.shard_call_timeout_ms == 10_000


def test_backpressure_mark_must_be_below_the_busy_bound():
    with pytest.raises(ConfigError, match=r"shard_queue_pause_taps \(50\) must be at most shard_queue_max_taps \(20\)"):
        load_settings(env={"CITYCARD_GATEWAY__SHARD_QUEUE_MAX_TAPS": "20", "CITYCARD_GATEWAY__SHARD_QUEUE_PAUSE_TAPS": "50"})
    s = load_settings(env={"CITYCARD_GATEWAY__SHARD_QUEUE_MAX_TAPS": "20", "CITYCARD_GATEWAY__SHARD_QUEUE_PAUSE_TAPS": "0"})
    assert s.gateway.queue_pause_taps == 0  # 0: never stop reading
    assert load_settings(env={}).gateway.queue_pause_taps == 8000  # unset: a fifth of the BUSY bound
    small = load_settings(env={"CITYCARD_GATEWAY__SHARD_QUEUE_MAX_TAPS": "20"})  # an older config
    assert small.gateway.queue_pause_taps == 4


def test_snapshot_deferral_settings():
    s = load_settings(env={})
    assert (s.ledger.snapshot_quiet_fraction, s.ledger.snapshot_defer_max_rows) == (0.5, 5_000_000)
    for bad in ("0", "1.5"):
        with pytest.raises(ConfigError, match="snapshot_quiet_fraction"):
            load_settings(env={"CITYCARD_LEDGER__SNAPSHOT_QUIET_FRACTION": bad})


def test_database_roles_and_the_app_login():
    s = load_settings(env={"CITYCARD_DATABASE_URL": "postgresql://admin@db/city",
                           "CITYCARD_DATABASE_APP_URL": "postgresql://city_app:pw@db/city",
                           "CITYCARD_DATABASE__APP_ROLE": "city_app"})
    assert s.database.app_url == "postgresql://city_app:pw@db/city"
    assert (s.database.owner_role, s.database.app_role) == ("citycard_owner", "city_app")


@pytest.mark.parametrize(("env", "words"), [
    ({"CITYCARD_DATABASE__APP_ROLE": "citycard_owner"}, "must differ"),
    ({"CITYCARD_DATABASE__OWNER_ROLE": "Robert'); DROP"}, "database.owner_role"),
    ({"CITYCARD_DATABASE_APP_URL": "postgresql://app@db/city"}, "app_url needs url"),
])
def test_bad_database_roles_stop_start_up(env, words):
    with pytest.raises(ConfigError, match=words):
        load_settings(env=env)


def test_the_app_login_defaults_to_the_server_of_the_migrations_login():
    from citycard.persistence.roles import app_login_url

    assert app_login_url("postgresql://postgres:secret@127.0.0.1:5432/test", "citycard_app") == \
        "postgresql://citycard_app@127.0.0.1:5432/test"
    assert app_login_url("postgresql://postgres@/citycard?host=/run/pg&port=5433", "citycard_app") == \
        "postgresql://citycard_app@/citycard?host=/run/pg&port=5433"
