"""The distributed runtime: the Celery app and task, the pipeline around the engine,
the ledger in Redis, S3 storage, the message contract, metrics and logs."""
