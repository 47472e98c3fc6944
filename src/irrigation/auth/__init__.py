"""Sites (tenants), API keys, scopes and the authenticated principal."""
