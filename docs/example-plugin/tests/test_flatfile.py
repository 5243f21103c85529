"""The example backend passes cv-gateway's conformance suite: this file is all a plugin needs."""

import pytest
from gateway_example_backend.flatfile import FlatFileBackend

from gateway.testing.conformance import BackendConformance


async def started(root) -> FlatFileBackend:
    backend = FlatFileBackend(root=str(root))
    await backend.start()
    return backend


class TestFlatFileBackend(BackendConformance):
    @pytest.fixture
    async def backend(self, tmp_path):
        backend = await started(tmp_path / "flat")
        yield backend
        await backend.close()

    @pytest.fixture
    def reopen(self, tmp_path):
        """Storage outlives an instance: turn on the restart and two-instance tests."""
        return lambda: started(tmp_path / "flat")
