"""natkit.ice."""
