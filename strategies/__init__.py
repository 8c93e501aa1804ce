"""fedlora aggregation: pure math on numpy arrays plus thin Flower strategies. No torch here."""
