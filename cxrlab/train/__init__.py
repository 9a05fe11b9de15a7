"""Training: ``train(recipe, data, out, resume=False) -> run_dir``, balancing strategies, the feature cache, and
``load_run(run_dir)`` to predict with a trained run.

>>> run_dir = train("phantom-diagnosis", ["data/phantom/manifest.csv"], "runs/demo")
>>> load_run(run_dir).predict(["new.png"])
"""

from cxrlab.train.balancing import BALANCING, Balancer, get_balancer
from cxrlab.train.predict import RunModel, load_run
from cxrlab.train.trainer import train

__all__ = ["BALANCING", "Balancer", "RunModel", "get_balancer", "load_run", "train"]
