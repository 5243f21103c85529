"""The memory backend passes the conformance suite."""

import pytest

from gateway.testing.conformance import BackendConformance
from gateway_plugins.memory import MemoryBackend


class TestMemoryBackend(BackendConformance):
    @pytest.fixture
    async def backend(self):
        backend = MemoryBackend()
        await backend.start()
        yield backend
        await backend.close()

    async def test_instances_do_not_share_a_store(self, backend):
        other = MemoryBackend()
        await backend.create_bucket("only-here")
        assert [b.name for b in await other.list_buckets()] == []
