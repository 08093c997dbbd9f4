"""Hostile-host tests: faults of the machine under the harness (the Docker engine killed mid-run, ...)."""
