"""Alerts with a lifecycle (raised, acknowledged, cleared) and webhook subscriptions."""
