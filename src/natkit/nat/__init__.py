"""natkit.nat."""
