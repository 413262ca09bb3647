"""The region of many cities on one machine: the region lab (docs/interop.md, "The region lab")."""
