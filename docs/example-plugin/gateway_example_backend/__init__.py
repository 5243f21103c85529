"""An example cv-gateway backend plugin (see docs/plugins.md)."""
