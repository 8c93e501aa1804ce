"""``fedlora compare``: every strategy and the reference trainings on one federation."""
