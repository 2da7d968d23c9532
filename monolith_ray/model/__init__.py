"""Pure-JAX models over embedding rows pulled from the parameter servers (layer 3: no Ray,
no I/O). DeepFM first; pooling and padding are model-agnostic; metrics are NumPy."""

from monolith_ray.model.deepfm import (
    DeepFMConfig as DeepFMConfig,
    Params as Params,
    apply as apply,
    fm_interaction as fm_interaction,
    init as init,
    loss_fn as loss_fn,
    make_grad_step as make_grad_step,
    make_predict as make_predict,
    make_train_step as make_train_step,
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
