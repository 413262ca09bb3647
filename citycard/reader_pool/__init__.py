"""Attached PC/SC card readers through pyscard and the system's pcscd."""
