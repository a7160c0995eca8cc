"""PGD-AT (Madry et al., ICLR 2018): cross-entropy at the PGD adversarial example.

The baseline every fair-AT method is compared with (``fairat.evidence.comparison``)."""

from __future__ import annotations

from fairat.engine.methods import MethodSpec

METHOD = MethodSpec(
    name="pgd_at", order=0,
    describe=lambda train: "PGD adversarial training (Madry et al. 2018): cross-entropy at the "
                           "PGD adversarial example")
