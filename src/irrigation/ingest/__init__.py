"""Sensor readings in: validated batches, quarantine, ingestion jobs, bulk import."""
