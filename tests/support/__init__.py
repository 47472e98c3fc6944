"""Shared test toolkit: factories, problem assertions, polling, servers and processes."""
