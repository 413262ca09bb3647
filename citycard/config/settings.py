"""Settings: the shipped default.toml, an optional user TOML, then environment variables.

Validated by pydantic; any bad value stops start-up with a ConfigError naming the key.
"""

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import limits
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import ConfigError

_HERE = Path(__file__).parent
DEFAULT_TOML = _HERE / "default.toml"
FARES_DIR = _HERE / "fares"
_ROLE = r"^[a-z_][a-z0-9_]{0,62}$"  # a Postgres role name that needs no quoting

# Environment variables with names of their own (the rest: CITYCARD_SECTION__KEY).
_NAMED_ENV = {
    "CITYCARD_DATABASE_URL": ("database", "url"),
    "CITYCARD_DATABASE_APP_URL": ("database", "app_url"),
    "CITYCARD_REDIS_URL": ("redis", "url"),
    "RAY_ADDRESS": ("ray", "address"),
    "CITYCARD_STATE_DIR": ("state", "dir"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class City(_Section):
    name: str = Field(min_length=1)
    account_shards: int = Field(ge=1, le=1024)
    session_shards: int = Field(ge=1, le=1024)
    master_key_hex: str
    fare_table: str = Field(min_length=1)

    @field_validator("master_key_hex")
    @classmethod
    def _hex_key(cls, v: str) -> str:
        try:
            raw = bytes.fromhex(v)
        except ValueError:
            raise ValueError("must be hexadecimal") from None
        if len(raw) < 16:
            raise ValueError("must be at least 16 bytes (32 hex digits)")
        return v

    @property
    def master_key(self) -> bytes:
        return bytes.fromhex(self.master_key_hex)


class Gateway(_Section):
    host: str
    port: int = Field(ge=0, le=65535)
    max_frame_bytes: int = Field(ge=1024, le=16 * 1024 * 1024)
    max_batch_taps: int = Field(ge=1, le=1000)
    shard_batch_max_taps: int = Field(ge=1, le=100_000)
    shard_inflight_calls: int = Field(ge=1, le=64)
    # queued taps before a second call overlaps one in flight (router.py): fewer, larger calls
    shard_pipeline_min_taps: int = Field(default=256, ge=1, le=100_000)
    # gateway processes on this host sharing the port (cli/gateway_workers.py); 1: this one only
    processes: int = Field(default=1, ge=1, le=64)
    shard_queue_max_taps: int = Field(ge=1, le=10_000_000)
    # queued taps per shard at which the gateway stops reading terminals (router.py); 0: never;
    # unset: a fifth of shard_queue_max_taps (queue_pause_taps)
    shard_queue_pause_taps: int | None = Field(default=None, ge=0, le=10_000_000)
    retry_deadline_ms: int = Field(ge=0, le=600_000)
    shard_call_timeout_ms: int = Field(ge=100, le=600_000)
    auth_timeout_ms: int = Field(ge=100, le=600_000)
    heartbeat_ms: int = Field(ge=1000, le=3_600_000)
    linger_ms: float = Field(ge=0, le=1000)
    terminal_max_taps_per_s: float = Field(ge=0)  # 0: no per-terminal limit
    terminal_burst_taps: int = Field(ge=0, le=10_000_000)
    terminal_check_ms: int = Field(default=30_000, ge=0, le=3_600_000)  # 0: only Redis messages
    # (terminal, seq) -> card kept to refuse a seq reused for a card of another shard (seqbook.py)
    seq_memory_per_terminal: int = Field(default=1024, ge=1, le=1_000_000)
    seq_memory_total: int = Field(default=500_000, ge=1, le=100_000_000)

    @property
    def queue_pause_taps(self) -> int:
        p = self.shard_queue_pause_taps
        return self.shard_queue_max_taps // 5 if p is None else p

    @model_validator(mode="after")
    def _pause_below_busy(self) -> "Gateway":
        if self.shard_queue_pause_taps is not None and self.shard_queue_pause_taps > self.shard_queue_max_taps:
            raise ValueError(f"shard_queue_pause_taps ({self.shard_queue_pause_taps}) must be at most "
                             f"shard_queue_max_taps ({self.shard_queue_max_taps}): reading stops before BUSY")
        return self


class Ledger(_Section):
    dedupe_limit: int = Field(ge=1, le=100_000_000)
    commit_max_rows: int = Field(ge=1, le=1_000_000)
    commit_timeout_ms: int = Field(ge=100, le=600_000)
    load_timeout_ms: int = Field(ge=1000, le=86_400_000)
    snapshot_every_rows: int = Field(ge=1)
    snapshot_interval_s: float = Field(gt=0)
    # A due snapshot waits while the shard journals more than this fraction of its highest rate
    # of the last 30 minutes (1: the rate is not asked) or its host's CPU is busy, and goes
    # anyway once the rows since the last one reach snapshot_defer_max_rows (or
    # snapshot_every_rows, if that is more).
    snapshot_quiet_fraction: float = Field(gt=0, le=1)
    snapshot_quiet_cpu_idle: float = Field(ge=0, lt=1)  # and the host's CPU at least this idle (0: not asked)
    snapshot_defer_max_rows: int = Field(ge=1)


class Metrics(_Section):
    host: str
    port: int = Field(ge=0, le=65535)


class Api(_Section):
    host: str
    port: int = Field(ge=0, le=65535)  # 0 disables the HTTP API
    epurse_max_fen: int = Field(ge=1)  # an e-purse top-up may not take the purse above this
    pin_max_tries: int = Field(ge=1, le=100)  # wrong PINs in a row before the PIN locks
    pin_kdf_n: int = Field(ge=2, le=2**20)  # scrypt cost (a power of two)
    disbursement_batch: int = Field(ge=1, le=100_000)  # credits per call to a shard
    audit_reconcile_s: float = Field(ge=0.1, le=86_400)  # how often the journal is checked for unaudited ops
    audit_reconcile_grace_ms: int = Field(ge=0, le=3_600_000)  # ops younger than this are their request's
    self_session_ttl_s: int = Field(ge=30, le=86_400)  # a self-service login lasts this long
    # failed checks allowed, as "N/period" tiers ("5/minute;20/hour": back-off by the longer window)
    login_failures_per_source: str
    login_failures_per_card: str
    pin_failures_per_token: str
    kdf_in_flight_per_source: int = Field(ge=1, le=64)  # PIN checks one source may have in progress
    trusted_proxies: list[IPvAnyNetwork]  # peers whose X-Forwarded-For names the real source
    # Bounds on what a client may send (docs/api.md, "Input rules and errors"): a JSON body,
    # a beneficiary upload (a million lines), and the request line with its headers.
    max_body_bytes: int = Field(65_536, ge=1024, le=16 * 2**20)
    max_upload_bytes: int = Field(80 * 2**20, ge=1024, le=1024 * 2**20)
    max_head_bytes: int = Field(16_384, ge=4096, le=1024 * 1024)

    @field_validator("login_failures_per_source", "login_failures_per_card", "pin_failures_per_token")
    @classmethod
    def _rate_limits(cls, v: str) -> str:
        try:
            limits.parse_many(v)
        except ValueError as exc:
            raise ValueError(f'not a list of limits like "5/minute;20/hour": {exc}') from None
        return v

    @field_validator("pin_kdf_n")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError("must be a power of two")
        return v


class Database(_Section):
    url: str  # the migrations' login: the owner role, or one that may SET ROLE to it
    app_url: str = ""  # the platform's own login; empty: url's server as app_role
    owner_role: str = Field(default="citycard_owner", pattern=_ROLE)
    app_role: str = Field(default="citycard_app", pattern=_ROLE)
    schema_: str = Field(alias="schema", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    pool_size: int = Field(ge=1, le=100)

    @model_validator(mode="after")
    def _roles(self) -> "Database":
        if self.owner_role == self.app_role:
            raise ValueError("owner_role and app_role must differ: the app must not own the tables")
        if self.app_url and not self.url:
            raise ValueError("app_url needs url too (the embedded Postgres makes its own logins)")
        return self

    @property
    def schema(self) -> str:  # type: ignore[override]  # shadows pydantic's deprecated schema()
        return self.schema_


class Redis(_Section):
    url: str
    prefix: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")


class Ray(_Section):
    address: str
    namespace: str = Field(min_length=1)
    num_cpus: int = Field(ge=0, le=4096)
    # A cluster's token auth (docs/deploy.md): "auto" uses a token when one is known
    auth_mode: Literal["auto", "token", "disabled"] = "auto"
    auth_token: str = Field(default="", repr=False)  # the cluster's token itself; or:
    auth_token_file: str = ""  # a file holding it (Ray's default: ~/.ray/auth_token)

    @property
    def on_cluster(self) -> bool:
        """Joined to a Ray cluster; "" and "local" (Ray's own word) start a Ray of this run's own."""
        return self.address not in ("", "local")


def _hex16(name: str, v: str) -> str:
    try:
        raw = bytes.fromhex(v)
    except ValueError:
        raise ValueError(f"{name} must be hexadecimal") from None
    if len(raw) != 16:
        raise ValueError(f"{name} must be 16 bytes (32 hex digits), got {len(raw)}")
    return v


class Card(_Section):
    """The city-pass: the issuer's master keys (docs/card.md) and the batch-signing master."""

    issuer_mpk_hex: str  # purchase: in every terminal's SAM
    issuer_mlk_hex: str  # load: the host only
    issuer_mtk_hex: str  # TAC: the host only
    batch_master_key_hex: str  # SAMs' upload-batch keys derive from it

    @field_validator("issuer_mpk_hex", "issuer_mlk_hex", "issuer_mtk_hex", "batch_master_key_hex")
    @classmethod
    def _keys(cls, v: str) -> str:
        return _hex16("key", v)


class State(_Section):
    dir: str

    @property
    def path(self) -> Path:
        if self.dir:
            return Path(self.dir).expanduser()
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "citycard"


class Region(_Section):
    """The inter-platform link (docs/interop.md, "Running the link"). Absent: a single city,
    nothing listens and every tap goes to this city's shards."""

    own: str  # this city's code in the registry
    issuers: list[dict[str, Any]] = Field(min_length=1, max_length=1000)  # as config/issuers.py reads them
    link_host: str = "0.0.0.0"
    link_port: int = Field(default=7800, ge=0, le=65535)  # 0: any free port (tests)
    link_key_path: str = Field(min_length=1)  # a file holding this city's Ed25519 link seed, 64 hex digits
    tap_timeout_ms: int = Field(default=2000, ge=50, le=60_000)  # then stand-in (well under terminals' own)
    connect_timeout_ms: int = Field(default=1000, ge=50, le=60_000)
    max_inflight_taps: int = Field(default=10_000, ge=1, le=1_000_000)  # per issuer; more: stand-in
    standin_window_ms: int = Field(default=3_600_000, ge=1000, le=7 * 86_400_000)  # floor limits' window
    backoff_min_ms: int = Field(default=1000, ge=10, le=60_000)
    backoff_max_ms: int = Field(default=30_000, ge=10, le=600_000)
    heartbeat_ms: int = Field(default=15_000, ge=1000, le=600_000)
    # the clearing house's GET /suspended, polled: those issuers' cards get no stand-in here (interop/house_poll.py)
    house_url: str | None = Field(default=None, min_length=1, max_length=2000)  # absent: nothing polled
    house_poll_ms: int = Field(default=60_000, ge=100, le=3_600_000)
    house_timeout_ms: int = Field(default=5_000, ge=50, le=60_000)

    @model_validator(mode="after")
    def _registry(self) -> "Region":
        from .issuers import registry_from_dict

        registry_from_dict({"own": self.own, "issuers": self.issuers})  # ConfigError names the field
        return self


class Settings(_Section):
    city: City
    gateway: Gateway
    ledger: Ledger
    metrics: Metrics
    api: Api
    database: Database
    redis: Redis
    ray: Ray
    state: State
    card: Card
    region: Region | None = None

    @model_validator(mode="after")
    def _timeouts_nest(self) -> "Settings":
        # A shard call waits for its group commit and maybe the one before it: giving the call
        # up sooner than two commit timeouts would retry taps the store is still deciding.
        if self.gateway.shard_call_timeout_ms < 2 * self.ledger.commit_timeout_ms:
            raise ValueError(f"gateway.shard_call_timeout_ms ({self.gateway.shard_call_timeout_ms}) must be at least"
                             f" twice ledger.commit_timeout_ms ({self.ledger.commit_timeout_ms})")
        return self

    def fare_table_path(self) -> Path:
        name = self.city.fare_table
        candidate = Path(name)
        if candidate.suffix == ".toml" or "/" in name:
            return candidate.expanduser()
        return FARES_DIR / f"{name}.toml"

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Defaults, then ``path`` (or $CITYCARD_CONFIG), then the environment, then ``overrides``."""
    env = os.environ if env is None else env
    raw = _read_toml(DEFAULT_TOML)
    user_path = path or env.get("CITYCARD_CONFIG")
    if user_path:
        _merge(raw, _read_toml(Path(user_path)))
    _merge(raw, _env_overrides(env))
    if overrides:
        _merge(raw, {k: dict(v) for k, v in overrides.items()})
    return settings_from_dict(raw)


def settings_from_dict(raw: Mapping[str, Any]) -> Settings:
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, (section, key) in _NAMED_ENV.items():
        if name in env:
            out.setdefault(section, {})[key] = env[name]
    for name, value in env.items():
        if name.startswith("CITYCARD_") and "__" in name:
            section, _, key = name[len("CITYCARD_") :].lower().partition("__")
            out.setdefault(section, {})[key] = value
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
