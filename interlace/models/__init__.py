"""Loading models: families, decoder-layer discovery (`find_parts`), `load_model` (models.load)."""
