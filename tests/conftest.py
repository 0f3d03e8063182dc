"""Suite-wide pytest settings: Hypothesis profiles.

The "ci" profile is loaded by default; pick another with HYPOTHESIS_PROFILE=dev.
"""

import os

from hypothesis import settings

settings.register_profile("ci", deadline=None, max_examples=200)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
