"""The load lab's terminal client is the shared one in ``citycard.terminal.client``; kept under
this name for the code and tests that import it from here."""

from ..terminal.client import ServerError, TerminalClient

__all__ = ["ServerError", "TerminalClient"]
