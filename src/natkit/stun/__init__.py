"""natkit.stun."""
