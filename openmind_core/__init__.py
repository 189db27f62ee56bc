"""OpenMind's library: model, data lake, trainer, inference and memory estimate.

Never imports prefect: everything here runs from a notebook, a script or torchrun on its own.

``import openmind_core`` (and ``openmind_core.data``) is light: it loads no transformers model
code, so the CLI's pre-flight, data-only subprocesses and Dask conversion workers pay only for what
they use.  ``import openmind_core.model`` registers the model with transformers' Auto classes
(``model_type: openmind``), after which ``AutoModelForImageTextToText.from_pretrained(run_dir /
"final")`` returns a ``MultimodalReasoningModel``.
"""

__version__ = "0.1.0"
