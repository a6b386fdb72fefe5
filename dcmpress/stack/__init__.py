"""The embedded local stack: Redis, SeaweedFS S3 and Celery workers as child processes
(for ``dcmpress demo`` and the test fixtures), the demo itself, and sample images."""
