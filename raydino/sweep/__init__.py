"""The Ray Tune sweep over loss weights, and the placement groups its early-stopped trials leave."""
