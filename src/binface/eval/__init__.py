"""binface.eval."""
