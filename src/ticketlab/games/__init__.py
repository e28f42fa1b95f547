"""Emergent-communication games (the referential game of Zhou et al. 2022's compositional-language experiment)."""
