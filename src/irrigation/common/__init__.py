"""Pieces shared by every domain: errors, time, pagination. Imports no domain."""
