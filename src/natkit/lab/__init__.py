"""natkit.lab."""
