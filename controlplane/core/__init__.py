"""Core of the control plane: the registry (stacks, surfaces, populations), allocations, assignment,
audit, errors and permissions. The lowest layer: it imports no other app of the project.

The Django app's label stays ``controlplane`` (tables, migrations and content types unchanged).
Importing this package must stay cheap and Django-free, so that the pure assignment library
(``controlplane.core.assignment``) can be used by serving fleets without Django configured.
"""
