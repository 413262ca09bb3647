"""Who asks: written into the audit log with every change."""

from dataclasses import dataclass
from typing import Protocol


class Who(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def role(self) -> str: ...


@dataclass(frozen=True)
class Holder:
    """A holder logged in with the card's PIN (self-service)."""

    card_no: int

    @property
    def name(self) -> str:
        return f"self:{self.card_no}"

    @property
    def role(self) -> str:
        return "self_service"
