"""Prepare: load, validate and subset the data set named in the `data` knobs."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prepare(params: str, data: Output[Dataset]):
    """Write train/val/test .npz files and manifest.json into the ``data`` folder.

    Args:
        params: ``key=value`` lines of the `data` knobs (fairat.cluster.params.knob_lines).
    """
    from fairat.cluster.runtime import run_prepare

    run_prepare(params, data.path)
