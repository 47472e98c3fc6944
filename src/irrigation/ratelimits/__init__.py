"""Rate limits: who a request is counted for, and each site's own limits per class."""
