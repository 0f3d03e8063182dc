"""natkit.bench."""
