"""Helpers shared by the test modules (fixture data, tiny configs, reference loops)."""
