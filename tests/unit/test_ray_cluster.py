"""Joining a Ray cluster: which token and auth mode Ray's client gets from the settings, the
address's shape, placement, and the one-line answers for an attached gateway's missing settings."""

import re

import pytest

from citycard.cli.ray_cluster import (
    MODE_ENV,
    PLACED_CPUS,
    TOKEN_ENV,
    TOKEN_PATH_ENV,
    auth_env,
    check_reachable,
    placement,
    probe_address,
)
from citycard.cli.up import check_attach
from citycard.config.settings import load_settings
from citycard.errors import ConfigError


def _ray(**ray: object):
    return load_settings(env={}, overrides={"ray": {"address": "10.0.0.1:6379", **ray}}).ray


def test_a_token_setting_turns_token_mode_on(tmp_path):
    assert auth_env(_ray(auth_token=" abc \n"), {}, tmp_path) == {TOKEN_ENV: "abc", MODE_ENV: "token"}


def test_a_token_file_is_passed_as_ray_token_path(tmp_path):
    f = tmp_path / "tok"
    f.write_text("abc")
    assert auth_env(_ray(auth_token_file=str(f)), {}, tmp_path) == {TOKEN_PATH_ENV: str(f), MODE_ENV: "token"}


def test_a_missing_token_file_names_the_setting(tmp_path):
    with pytest.raises(ConfigError, match=r"^ray.auth_token_file .*nope is not a file"):
        auth_env(_ray(auth_token_file=str(tmp_path / "nope")), {}, tmp_path)


def test_ray_default_token_file_or_variables_turn_token_mode_on(tmp_path):
    assert auth_env(_ray(), {}, tmp_path) == {}  # no token anywhere: as Ray itself would connect
    assert auth_env(_ray(), {TOKEN_ENV: "x"}, tmp_path) == {MODE_ENV: "token"}
    assert auth_env(_ray(), {TOKEN_PATH_ENV: "/t"}, tmp_path) == {MODE_ENV: "token"}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("x")
    assert auth_env(_ray(), {}, tmp_path) == {MODE_ENV: "token"}


def test_an_explicit_mode_wins(tmp_path):
    assert auth_env(_ray(auth_token="t"), {MODE_ENV: "disabled"}, tmp_path) == {TOKEN_ENV: "t"}  # env kept
    assert auth_env(_ray(auth_token="t", auth_mode="disabled"), {}, tmp_path) == {TOKEN_ENV: "t", MODE_ENV: "disabled"}
    with pytest.raises(ConfigError, match="ray.auth_mode is token but no token is set: set ray.auth_token"):
        auth_env(_ray(auth_mode="token"), {}, tmp_path)


def test_a_bad_auth_mode_is_refused_by_name():
    with pytest.raises(ConfigError, match="ray.auth_mode"):
        _ray(auth_mode="tokens")


@pytest.mark.parametrize(("address", "where"), [
    ("10.0.0.1:6379", ("10.0.0.1", 6379)), ("ray://head:10001", ("head", 10001)), ("auto", None),
    ("[::1]:6379", ("::1", 6379)),
])
def test_addresses(address, where):
    assert probe_address(address) == where


@pytest.mark.parametrize("address", ["head", "head:port", ":6379", "head:99999"])
def test_a_bad_address_names_the_setting(address):
    with pytest.raises(ConfigError, match=r"^ray.address \(RAY_ADDRESS\) must be host:port"):
        probe_address(address)


def test_nothing_listening_is_one_line():
    with pytest.raises(ConfigError, match=r"^no Ray cluster answers at ray.address \(RAY_ADDRESS\) 127.0.0.1:1: "):
        check_reachable("127.0.0.1:1", timeout_s=2)


def test_placement_spreads_round_robin_and_stays_soft():
    assert placement(["only"], 3) == {}  # one node: the actors' options as they always were
    nodes = ["a" * 56, "b" * 56, "c" * 56]
    chosen = [placement(nodes, i)["scheduling_strategy"] for i in range(5)]
    assert [s.node_id for s in chosen] == [nodes[0], nodes[1], nodes[2], nodes[0], nodes[1]]
    assert all(s.soft for s in chosen)  # a dead node's shards restart elsewhere
    assert placement(nodes, 0)["num_cpus"] == PLACED_CPUS > 0  # num_cpus=0 would ignore the affinity


@pytest.mark.parametrize(("missing", "named"), [
    ("ray", "ray.address (RAY_ADDRESS)"), ("database", "database.url (CITYCARD_DATABASE_URL)"),
    ("redis", "redis.url (CITYCARD_REDIS_URL)"),
])
def test_attach_needs_the_shared_services(missing, named):
    values = {"ray": {"address": "h:6379"}, "database": {"url": "postgresql://h/db"}, "redis": {"url": "redis://h"}}
    values[missing] = {"address": ""} if missing == "ray" else {"url": ""}
    with pytest.raises(ConfigError, match="^" + re.escape(f"--attach joins a platform on a cluster: set {named}")):
        check_attach(load_settings(env={}, overrides=values))


@pytest.mark.parametrize(("address", "on_cluster"), [("", False), ("local", False), ("h:6379", True),
                                                     ("ray://h:10001", True)])
def test_local_is_rays_word_for_a_ray_of_this_runs_own(address, on_cluster):
    # RAY_ADDRESS=local (the chaos tests' setting) starts a Ray of its own, never a cluster connect
    assert load_settings(env={"RAY_ADDRESS": address}).ray.on_cluster is on_cluster


def test_attach_refuses_a_local_ray():
    values = {"ray": {"address": "local"}, "database": {"url": "postgresql://h/db"}, "redis": {"url": "redis://h"}}
    with pytest.raises(ConfigError, match=re.escape("set ray.address (RAY_ADDRESS)")):
        check_attach(load_settings(env={}, overrides=values))
def test_actors_are_not_given_the_clusters_token(monkeypatch):
    from types import SimpleNamespace

    from citycard.cli import runtime
    from citycard.config.settings import settings_from_dict

    created: list[dict] = []

    class FakeActorClass:
        def options(self, **_options):
            return self

        def remote(self, _index, cfg, _url):
            created.append(cfg)
            return object()

    monkeypatch.setattr(runtime, "AccountShard", FakeActorClass())
    monkeypatch.setattr(runtime, "TerminalSession", FakeActorClass())
    monkeypatch.setattr(runtime, "node_order", lambda: [])
    settings = load_settings(env={}, overrides={"ray": {"address": "10.0.0.1:6379", "auth_token": "s3cret"},
                                                "city": {"account_shards": 2, "session_shards": 1}})
    platform = runtime.Platform(settings, SimpleNamespace(app_url=lambda _s: "postgresql://x/test"))
    shards, sessions = platform.start_actors()
    assert len(shards) == 2 and len(sessions) == 1 and len(created) == 3
    for cfg in created:
        assert "s3cret" not in repr(cfg) and cfg["ray"]["auth_token"] == ""
        assert settings_from_dict(cfg).city == settings.city  # everything else as it was
    assert settings.ray.auth_token == "s3cret"  # the platform's own settings keep it


def test_a_connection_error_from_ray_names_the_token_and_the_ports(monkeypatch):
    import ray

    from citycard.cli import ray_cluster

    def refuse(**_kwargs):
        raise ConnectionError("GCS did not answer")

    monkeypatch.setattr(ray_cluster, "check_reachable", lambda _address: None)
    monkeypatch.setattr(ray_cluster, "_reload_ray_config", lambda: None)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ConfigError) as refused:
        ray_cluster.connect_cluster(_ray(auth_token="t"), {}, environ={})
    line = str(refused.value)
    assert line.startswith("the Ray cluster at ray.address (RAY_ADDRESS) 10.0.0.1:6379 refused this client or is"
                           " unreachable (RAY_AUTH_MODE token)"), line
    assert "ray.auth_token" in line and "ports are reachable" in line and "wrong" not in line
