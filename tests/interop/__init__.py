"""Interop tests: natkit against real STUN peers (coturn, RFC 3489 clients).

A package so that this directory's ``conftest`` and helpers get module names of
their own (``interop.conftest``) next to ``tests/conftest.py``.
"""
