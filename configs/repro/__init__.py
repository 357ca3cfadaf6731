"""Reproduction recipes: each file is a config (`get_config(arg)`) plus its sweep (`get_sweep`)."""
