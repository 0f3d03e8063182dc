"""natkit.turn."""
