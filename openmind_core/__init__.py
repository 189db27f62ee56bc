"""OpenMind's library: model, data lake, trainer, inference and memory estimate.

Never imports prefect: everything here runs from a notebook, a script or torchrun on its own.
"""

__version__ = "0.1.0"
