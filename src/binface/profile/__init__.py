"""binface.profile."""
