"""natkit.security."""
