"""Process classes used by the tests (installed only by tests.settings)."""
