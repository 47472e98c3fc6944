"""Shared test toolkit: servers, and (in time) factories and problem assertions."""
