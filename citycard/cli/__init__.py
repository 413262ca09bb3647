"""Command line and runtime wiring (the other place besides actors/ that calls ray.*)."""
