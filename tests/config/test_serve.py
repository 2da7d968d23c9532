"""The serve section's feedback key: a secret, kept out of the repr."""

from __future__ import annotations

from monolith_ray.config import from_dict
from monolith_ray.config.serve import ServeConfig


def test_feedback_key_defaults_to_empty_and_stays_out_of_the_repr() -> None:
    assert ServeConfig().feedback_key == ""
    serve = from_dict(ServeConfig, {"feedback_key": "s3cret-key"})
    assert serve.feedback_key == "s3cret-key"
    assert "s3cret-key" not in repr(serve) and "feedback_key" not in repr(serve)
