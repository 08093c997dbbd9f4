"""The organizer's runner: one sandboxed run per case, resources sampled at 10 Hz, FLARE22 efficiency figures.

Python API: :func:`resource_monitor.monitor.run_team` with :class:`resource_monitor.settings.RunSettings`;
:func:`resource_monitor.records.read_efficiency` reads efficiency.csv back. CLI: ``python -m resource_monitor``.
"""
