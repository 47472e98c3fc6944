"""Zones, water sources, pumps and sensors of a site."""
