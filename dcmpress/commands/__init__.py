"""The commands of ``dcmpress``, one concern a module; :mod:`dcmpress.cli` is their root.

A command parses its options, calls the modules below it and prints. The producer, the
worker runtime and their clients (Redis, boto3, Celery) are imported inside the
commands that use them, so ``dcmpress --help`` and ``dcmpress compress`` never load them.
"""
