"""Analyses of negative transfer: each computes a tidy pandas table (no plotting, no I/O)."""
