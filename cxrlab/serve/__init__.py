"""The bedside service: FastAPI app + plain HTML/JS viewer over configured run directories.

>>> write_service_config("runs/demo/service.yaml", lung_run="runs/demo/lungs", diagnosis_run="runs/demo/dx")
>>> serve(load_service_config("runs/demo/service.yaml"))      # or: cxrlab serve --config runs/demo/service.yaml
"""

from cxrlab.serve.config import ServiceConfig, config_from_runs, load_service_config, write_service_config

__all__ = ["ServiceConfig", "config_from_runs", "create_app", "load_service_config", "serve", "start_background",
           "write_service_config", "AnalysisPipeline"]


def __getattr__(name: str):
    # The app and pipeline import torch and FastAPI; keep ``write_service_config`` importable cheaply (demo).
    if name == "create_app":
        from cxrlab.serve.app import create_app

        return create_app
    if name in ("serve", "start_background"):
        from cxrlab.serve import runner

        return getattr(runner, name)
    if name == "AnalysisPipeline":
        from cxrlab.serve.pipeline import AnalysisPipeline

        return AnalysisPipeline
    raise AttributeError(name)
