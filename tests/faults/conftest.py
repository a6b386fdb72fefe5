"""Fixtures shared by the fault tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dcmpress.stack.services import SeaweedS3
from tests.faults.proxy import FaultProxy


@pytest.fixture
def proxy(s3_server: SeaweedS3) -> Iterator[FaultProxy]:
    """The fault proxy in front of the test S3 server: it injects nothing until a test
    sets its rule, and counts what the server stores."""
    with FaultProxy(s3_server.endpoint_url) as proxy:
        yield proxy
    assert proxy.errors == []  # the proxy itself never failed
