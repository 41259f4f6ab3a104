"""Every private module of a dependency WeLIP uses, in one small adapter module per dependency.

A private path (``ray.llm._internal``, ``ray._private``, a vLLM protocol module) can move
in any release. Each is imported here and nowhere else, and ``tests/unit/test_compat.py``
imports every name, so an upgrade that moves one fails loudly in the unit tests instead
of at request time.
"""
