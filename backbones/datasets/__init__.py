"""Datasets and transforms the configs name."""
