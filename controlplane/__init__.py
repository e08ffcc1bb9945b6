"""Stack-unification control plane: Django project and core domain.

Importing this package must stay cheap and Django-free, so that the pure assignment library
(`controlplane.assignment`) can be used by serving fleets without Django installed.
"""
