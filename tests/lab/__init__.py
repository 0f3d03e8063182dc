"""NAT lab tests: real kernel NATs in network namespaces (need root).

A package so that this directory's ``conftest`` gets a module name of its own
(``lab.conftest``) next to ``tests/conftest.py``.
"""
