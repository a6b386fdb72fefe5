"""dcmpress's benchmarks: ``python -m benchmarks.run`` and the parts it is made of.

Each module with a ``main`` runs alone as ``python -m benchmarks.NAME`` from the
repository's root; ``harness`` holds the pieces ``run`` puts together. What each one
measures, how long it takes and how to read it: ``benchmarks/README.md``.
"""
