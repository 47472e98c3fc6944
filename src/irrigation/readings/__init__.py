"""Readings out: hourly and daily aggregates from SQL, raw series, CSV export, retention."""
