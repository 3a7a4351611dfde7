"""The network layer: the transformer (one attention, band attention, caches) and the
parts networks share; nothing about losses or data."""
