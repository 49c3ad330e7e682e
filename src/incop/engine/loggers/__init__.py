"""The loggers ``--log`` names, one file each; importing this package registers them in
:data:`incop.core.callbacks.LOGGERS` (a new one: its file, and its line here). A logger is a
callback (:class:`incop.core.callbacks.Logger`) that writes its own files into the run folder,
recorded in its manifest like every file incop writes."""

# isort: off
from incop.engine.loggers.tensorboard import TensorBoardLogger
from incop.engine.loggers.csv import CSVLogger

# isort: on

__all__ = ["CSVLogger", "TensorBoardLogger"]
