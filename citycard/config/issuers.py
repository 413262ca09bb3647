"""The issuer registry from its TOML table (docs/interop.md, "Participants"), validated by
pydantic like the rest of the settings. Pure: it takes the parsed dict; any problem raises a
ConfigError naming the field, e.g. ``region.issuers[2].card_prefix``.

    [region]
    own = "HZ"
    [[region.issuers]]
    code = "HZ"
    name = "Hangzhou"
    card_prefix = 330100
    link = "hz.example.org:7800"
    link_public_key_hex = "...64 hex digits..."
    floor_limit_fen = 2000
    tac_keys = { mpk_hex = "...", mlk_hex = "...", mtk_hex = "..." }   # optional
"""

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..domain.issuers import (
    CODE_PATTERN,
    LINK_KEY_BYTES,
    MAX_CARD_PREFIX,
    MAX_FLOOR_LIMIT_FEN,
    MAX_ISSUERS,
    Issuer,
    IssuerRegistry,
    parse_link_address,
)
from ..domain.offline import IssuerKeys
from ..errors import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _TacKeys(_Model):
    mpk_hex: str
    mlk_hex: str
    mtk_hex: str


class _Issuer(_Model):
    code: str = Field(pattern=CODE_PATTERN)
    name: str = Field(min_length=1, max_length=64)
    card_prefix: int = Field(ge=1, le=MAX_CARD_PREFIX)
    link: str = Field(min_length=3, max_length=300)
    link_public_key_hex: str
    floor_limit_fen: int = Field(ge=0, le=MAX_FLOOR_LIMIT_FEN)
    tac_keys: _TacKeys | None = None

    @field_validator("link")
    @classmethod
    def _link(cls, v: str) -> str:
        parse_link_address(v)
        return v

    @field_validator("link_public_key_hex")
    @classmethod
    def _key(cls, v: str) -> str:
        try:
            raw = bytes.fromhex(v)
        except ValueError:
            raise ValueError("must be hexadecimal") from None
        if len(raw) != LINK_KEY_BYTES:
            raise ValueError(f"must be {LINK_KEY_BYTES} bytes ({2 * LINK_KEY_BYTES} hex digits), got {len(raw)}")
        return v


class _Region(_Model):
    own: str = Field(pattern=CODE_PATTERN)
    issuers: list[_Issuer] = Field(min_length=1, max_length=MAX_ISSUERS)


def _path(loc: tuple[int | str, ...]) -> str:
    out = "region"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def registry_from_dict(raw: Mapping[str, Any]) -> IssuerRegistry:
    """The registry of a ``[region]`` table (already parsed from TOML)."""
    try:
        region = _Region.model_validate(dict(raw))
    except ValidationError as exc:
        problems = "; ".join(f"{_path(tuple(err['loc']))}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid issuer registry: {problems}") from None
    issuers = []
    for i, m in enumerate(region.issuers):
        host, port = parse_link_address(m.link)
        try:
            keys = None if m.tac_keys is None else IssuerKeys.of_hex(
                m.tac_keys.mpk_hex, m.tac_keys.mlk_hex, m.tac_keys.mtk_hex)
            issuers.append(Issuer(m.code, m.name, m.card_prefix, host, port, bytes.fromhex(m.link_public_key_hex),
                                  m.floor_limit_fen, keys))
        except ValueError as exc:
            raise ConfigError(f"invalid issuer registry: region.issuers[{i}]: {exc}") from None
    try:
        return IssuerRegistry(issuers, region.own)
    except ValueError as exc:
        raise ConfigError(f"invalid issuer registry: region.{exc}") from None


__all__ = ["registry_from_dict"]
