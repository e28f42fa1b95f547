"""Instruments that watch or probe training: Loss Change Allocation (`lca`), the straight path between two
networks and its error barrier (`interpolation`), early-bird masks and their distance (`mask_distance`),
and real channel pruning of BatchNorm networks (`channel_prune`)."""
