"""A record template: a seeded random generator in, one record's text out."""

from __future__ import annotations

import random
from collections.abc import Callable

Template = Callable[[random.Random], str]
