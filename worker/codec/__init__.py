"""The codec engine: one object's bytes in, one verified outcome out.

No I/O, no Celery: :func:`worker.codec.engine.process` is called by the local command
and by the distributed pipeline alike.
"""
