"""The parts of ``python -m benchmarks.run``, one job a module.

- ``sets``: the reference sets, synthesised in a temporary directory, and the targets;
- ``timing``: the protocol (warm-up, repeats, time budget), timings, progress notes;
- ``children``: child processes started from a small launcher: wall time, peak RSS;
- ``commands``: ``dcmpress compress`` and the peer toolkits' commands as subprocesses;
- ``cells``: one target on one reference set: bare, engine, compress -j 1, peers;
- ``startup``: fixed cost per invocation, ``-j 2`` against ``-j 1``, start-up payoff;
- ``stack``: the real stack end to end (``benchmarks.end_to_end``) per lossless target;
- ``machine``: the machine, packages and peer tools a run was made on;
- ``tables``: the results as tables, for the terminal and for Markdown;
- ``report``: the report on the terminal and the ``RESULTS.md`` / ``.json`` writer.

And one part of ``benchmarks.control_plane``, which runs on its own:

- ``stub_worker``: a stand-in worker process (a worker's Redis calls, no codec, no S3)
  and its archiver thread.
"""
