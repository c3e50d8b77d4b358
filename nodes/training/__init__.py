"""Training IP-Adapters (base and plus, SD1.5 and SDXL) after the reference recipe, writing h94 files.

Pure library code on torch/diffusers/transformers/accelerate; ``nodes.py`` (the TrainIPAdapter node) and
``cli.py`` (``ipgraph train ipadapter``, ``ipgraph convert ipadapter``) are thin layers over it.

Module map: data (data file, preprocessing, drops), cache (image embeddings once per dataset), adapter (the
trainable modules and their attention processor), loop (Trainer, TrainConfig: the recipe on accelerate),
files (h94 writer, training states, reference-checkpoint converter, atomic writes), logs (loss log and
plot), run (a run against the models folder), tinydata (a generated demo dataset).

Python API::

    from ipgraph.nodes.training import BaseModel, TrainConfig, Trainer, make_tiny_dataset, read_records
    trainer = Trainer(BaseModel.from_checkpoint(ckpt), encoder, read_records(data, images), TrainConfig(steps=20))
    losses = trainer.train(on_step=lambda t, loss: print(t.step, loss))
    save_adapter(path, trainer.adapter_module.h94_state_dict(), trainer.describe())
"""

from .adapter import IPAdapterModules, TrainingAttnProcessor, installed
from .data import DROP_RATES, Record, read_records
from .errors import TrainingError
from .files import convert_reference, load_state, reference_to_h94, save_adapter, save_state
from .logs import plot_losses
from .loop import BaseModel, StepInputs, TrainConfig, Trainer
from .run import RunResult, load_base, load_encoder, output_paths, run_training
from .tinydata import make_tiny_dataset

__all__ = [
    "DROP_RATES",
    "BaseModel",
    "IPAdapterModules",
    "Record",
    "RunResult",
    "StepInputs",
    "TrainConfig",
    "Trainer",
    "TrainingAttnProcessor",
    "TrainingError",
    "convert_reference",
    "installed",
    "load_base",
    "load_encoder",
    "load_state",
    "make_tiny_dataset",
    "output_paths",
    "plot_losses",
    "read_records",
    "reference_to_h94",
    "run_training",
    "save_adapter",
    "save_state",
]
