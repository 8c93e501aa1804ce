"""Local simulation: N institutions in this process through an in-process Flower grid."""
