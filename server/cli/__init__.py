"""The ``fedlora`` command line: one parser whose sub-commands follow the user's journeys."""
