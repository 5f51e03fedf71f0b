"""Pieces shared by several test files: tiny checkpoints and feeds, the in-process CLI, an OpenSSH server,
a model the project does not know, a stand-in for the tensorrt module. Fixtures live in tests/conftest.py."""
