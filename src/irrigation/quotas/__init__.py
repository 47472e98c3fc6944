"""Per-site quotas: what one site may hold or run at once, so no customer can crowd out another."""
