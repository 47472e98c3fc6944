"""Water use: the rollup and its API."""
