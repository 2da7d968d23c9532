"""Pure-JAX models over embedding rows pulled from the parameter servers (layer 3: no Ray,
no I/O). ``api``: what a model is (``init(key, spec)``, ``apply(params, embeddings, dense)
-> {task: logits}``); ``registry.build``: the model a config names (``deepfm``, ``dcn_v2`` or
one of your own by import path); ``steps``: the jitted grad/train/predict steps around any
model; pooling and padding are model-agnostic; metrics are NumPy."""

from monolith_ray.model.api import (
    TASKS as TASKS,
    Model as Model,
    ModelSpec as ModelSpec,
    Params as Params,
    SlotSpec as SlotSpec,
    spec_of as spec_of,
)
from monolith_ray.model.metrics import (
    StreamingAUC as StreamingAUC,
    StreamingLogLoss as StreamingLogLoss,
    auc as auc,
)
from monolith_ray.model.pooling import (
    Combiner as Combiner,
    bucket_size as bucket_size,
    pad_rows as pad_rows,
    pad_slots as pad_slots,
    pool as pool,
)
from monolith_ray.model.registry import build as build
from monolith_ray.model.steps import (
    init_params as init_params,
    loss_fn as loss_fn,
    make_grad_step as make_grad_step,
    make_predict as make_predict,
    make_train_step as make_train_step,
    normalize_dense as normalize_dense,
)
