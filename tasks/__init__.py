"""Thin Prefect tasks: each wraps one ravlm_core unit of work and passes ids, paths and counts, never data."""
