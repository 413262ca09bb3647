"""Where the repository is, for tests that read its docs or run tools in it."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
