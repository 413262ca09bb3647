"""Settings (TOML + environment) and the shipped city and fare tables."""

from .settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
