"""Pictures: comparison grids, what each method works with, the explorer, where figures go. Above experiments."""
