"""The embedding store: cuckoo map, tables, admission, expiry, optimizers. NumPy + Numba only."""
