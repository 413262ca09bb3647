"""The load-lab report's command row runs the same run again: the subcommand, every option as
given and the CITYCARD_* overrides in effect, secrets redacted (docs/loadtest.md)."""

import shlex

from citycard.cli.main import build_parser
from citycard.loadtest.command import REDACTED, rerunnable

ARGV = ["/venv/bin/citycard", "--config", "city.toml", "loadtest", "--target", "10.0.0.5:7700",
        "--rate", "2000", "--duration", "30", "--scenario", "spike", "--api-url", "http://10.0.0.5:7780",
        "--api-token", "cc_live_secret", "--report-dir", "my reports/run 1"]
ENV = {"CITYCARD_DATABASE_URL": "postgresql://ops:hunter2@db.city:5432/card", "CITYCARD_REDIS_URL": "redis://r:6379/0",
       "CITYCARD_CITY__ACCOUNT_SHARDS": "8", "CITYCARD_CITY__MASTER_KEY_HEX": "00112233445566778899aabbccddeeff",
       "CITYCARD_TOKEN": "cc_other", "HOME": "/root", "RAY_ADDRESS": "auto", "PGPASSWORD": "x"}


def _split(command: str) -> tuple[dict[str, str], list[str]]:
    words = shlex.split(command)
    env = {}
    while "=" in words[0] and not words[0].startswith("-"):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    assert words[0] == "citycard", words
    return env, words[1:]


def test_the_row_parses_back_to_the_same_subcommand_and_options() -> None:
    env, argv = _split(rerunnable(ARGV, ENV))
    again, first = vars(build_parser().parse_args(argv)), vars(build_parser().parse_args(ARGV[1:]))
    first["api_token"] = REDACTED  # the one difference: a secret is not written down
    assert {k: v for k, v in again.items() if k != "func"} == {k: v for k, v in first.items() if k != "func"}
    assert argv[:3] == ["--config", "city.toml", "loadtest"] and "my reports/run 1" in argv


def test_the_citycard_environment_is_in_front_and_secrets_are_redacted() -> None:
    command = rerunnable(ARGV, ENV)
    env, _ = _split(command)
    assert env == {"CITYCARD_CITY__ACCOUNT_SHARDS": "8", "CITYCARD_CITY__MASTER_KEY_HEX": REDACTED,
                   "CITYCARD_DATABASE_URL": f"postgresql://ops:{REDACTED}@db.city:5432/card",
                   "CITYCARD_REDIS_URL": "redis://r:6379/0", "CITYCARD_TOKEN": REDACTED}
    for secret in ("hunter2", "cc_live_secret", "cc_other", "00112233445566778899aabbccddeeff", "PGPASSWORD"):
        assert secret not in command, secret


def test_an_option_given_with_equals_is_redacted_too() -> None:
    command = rerunnable(["citycard", "loadtest", "--api-token=cc_x", "--rate=5"], {})
    assert command == f"citycard loadtest '--api-token={REDACTED}' --rate=5"
