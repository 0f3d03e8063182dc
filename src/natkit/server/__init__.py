"""natkit.server."""
