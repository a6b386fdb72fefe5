"""The operator's ``dcmpress`` command: its CLI, views and reports, the local command,
and the embedded stack behind ``dcmpress demo``."""
