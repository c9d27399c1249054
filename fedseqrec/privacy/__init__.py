"""privacy — see README (filled in by its own issue)."""
