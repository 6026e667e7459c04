"""Hypothesis profiles for the property tests (tests/unit/test_properties_*.py).

``ci`` (the default) runs few examples so the whole property set stays within
seconds; ``long`` explores far more: ``HYPOTHESIS_PROFILE=long scripts/test
tests/unit -k properties``. Neither keeps an example database (tests write
nothing into the checkout); a failure prints the example and the seed to
reproduce it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,  # a shared 2-core CI machine: timing says nothing here
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("long", max_examples=5_000, deadline=None, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
