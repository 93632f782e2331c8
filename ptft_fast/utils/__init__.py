"""Helpers every layer may use: they import nothing from ptft_fast (device facts, file I/O)."""
