"""binface.train."""
