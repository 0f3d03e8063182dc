"""natkit.net."""
