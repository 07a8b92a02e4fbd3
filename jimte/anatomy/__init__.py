"""Anatomy: the 29 Chest ImaGenome regions, their boxes, region texts and region-pooled features."""
