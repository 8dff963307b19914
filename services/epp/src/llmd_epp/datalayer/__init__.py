"""The data layer: where endpoints come from and what their engines report."""
