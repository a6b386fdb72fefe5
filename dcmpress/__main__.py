"""``python -m dcmpress`` is the ``dcmpress`` command."""

from dcmpress.cli import main

main()
