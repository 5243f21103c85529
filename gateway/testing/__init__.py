"""Test helpers for the gateway and for backend plugin authors.

- :class:`gateway.testing.conformance.BackendConformance`: the pytest suite
  every backend passes by subclassing it (see docs/plugins.md and the module
  docstring for the three lines a plugin needs).
- :class:`gateway.testing.server.GatewayProcess`: a real ``gateway serve``
  subprocess on a free loopback port.
"""

try:
    import pytest
except ImportError:  # production installs need only server.py's GatewayProcess, if anything
    pass
else:
    # Plain asserts in the suite then report both sides when they fail, as in a test module.
    pytest.register_assert_rewrite(
        "gateway.testing.conformance", "gateway.testing.conformance_keys", "gateway.testing.conformance_multipart",
        "gateway.testing.backend_io",
    )


def __getattr__(name: str):
    if name == "BackendConformance":  # imported lazily: it pulls in pytest and anyio
        from .conformance import BackendConformance

        return BackendConformance
    raise AttributeError(name)
