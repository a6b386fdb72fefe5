"""``python -m producer`` is the ``dcmpress`` command."""

from producer.cli import main

main()
