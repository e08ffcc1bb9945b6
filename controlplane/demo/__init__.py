"""The demo: seed data, the simulated traffic of a migration and ``manage.py demo_migration``.

Top layer, beside ``controlplane.web``: it drives every app the way a user and a serving fleet would.
"""
