"""binface.nn."""
