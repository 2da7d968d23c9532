"""Training data: datasets turned into example tables (see :mod:`monolith_ray.schemas`)."""
