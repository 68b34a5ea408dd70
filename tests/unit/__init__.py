"""Unit tests (no cluster needed). A package so that module names may repeat those in tests/integration/."""
