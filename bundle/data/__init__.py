"""Data: data lists, volume readers and transforms, samplers, input checks, demo data and dataset preparation."""
