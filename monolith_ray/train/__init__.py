"""Trainers: the training loop over parameter-server shards."""

from monolith_ray.train.loop import TrainLoop as TrainLoop, dense_optimizer as dense_optimizer
