"""The image every component runs on; the pipeline can retarget all tasks at compile time.

kfp is part of the image (a project dependency), so components skip kfp's run-time `pip install`:
pods start without network access to a package index.
"""

IMAGE = "ghcr.io/fairat/fairat:0.1.0"
