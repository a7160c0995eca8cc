"""TRADES (Zhang et al., ICML 2019): clean cross-entropy + beta * KL(clean || adversarial)."""

from __future__ import annotations

from fairat.engine.methods import MethodSpec

METHOD = MethodSpec(
    name="trades", order=1, fields=("trades_beta",),
    describe=lambda train: f"TRADES (Zhang et al. 2019), beta {train['trades_beta']}: clean "
                           "cross-entropy plus beta times the KL divergence to the adversarial "
                           "prediction")
