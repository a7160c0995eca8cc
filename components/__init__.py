"""Kubeflow Pipelines (kfp v2) components: one per step, each a single call into the project image.

Every component runs on :data:`IMAGE` (the `Dockerfile` at the repository root), imports `fairat`
inside its body and calls :mod:`fairat.cluster.runtime`, which maps artifact folders to
:mod:`fairat.steps`. No component installs packages at run time or holds ML logic, and importing this
package loads neither torch nor fairat's heavy modules.
"""

from components.compare import compare
from components.evaluate import evaluate
from components.gate import gate
from components.image import IMAGE
from components.prepare import prepare
from components.register import register
from components.train import train

__all__ = ["IMAGE", "prepare", "train", "evaluate", "gate", "compare", "register"]
