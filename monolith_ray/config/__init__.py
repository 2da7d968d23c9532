"""Typed configuration loaded from YAML, with errors that name the offending key.

One module per job: ``loader`` (the generic strict loader: :class:`ConfigError`,
:func:`from_dict`, YAML files and ``--set`` overrides), one module per section (``slots``, ``dense``,
``model``, ``train``, ``data``, ``kafka``, ``joiner``, ``online``, ``serve``, ``limits``, ``supervision``,
``history``, ``tasks``),
``root`` (:class:`Config`, one field per section, and :func:`load_config`) and ``inputs``
(the check, at a job's start, that the paths it reads exist). The names the rest of the
package imports are re-exported here.
"""

from monolith_ray.config.data import DataConfig
from monolith_ray.config.dense import DenseFeature
from monolith_ray.config.joiner import JoinerConfig
from monolith_ray.config.kafka import KafkaConfig, KafkaTopics
from monolith_ray.config.limits import LimitsConfig
from monolith_ray.config.loader import ConfigError, from_dict
from monolith_ray.config.model import ModelConfig
from monolith_ray.config.online import OnlineConfig
from monolith_ray.config.root import DEFAULT_CONFIG, Config, load_config
from monolith_ray.config.slots import (
    AdmissionConfig,
    InitializerConfig,
    OptimizerConfig,
    SlotConfig,
)
from monolith_ray.config.supervision import SupervisionConfig
from monolith_ray.config.tasks import TaskConfig
from monolith_ray.config.train import TrainConfig

__all__ = [
    "DEFAULT_CONFIG",
    "AdmissionConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DenseFeature",
    "InitializerConfig",
    "JoinerConfig",
    "KafkaConfig",
    "KafkaTopics",
    "LimitsConfig",
    "ModelConfig",
    "OnlineConfig",
    "OptimizerConfig",
    "SlotConfig",
    "SupervisionConfig",
    "TaskConfig",
    "TrainConfig",
    "from_dict",
    "load_config",
]
