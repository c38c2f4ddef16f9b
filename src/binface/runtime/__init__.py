"""binface.runtime."""
