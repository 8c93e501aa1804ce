"""fedlora node side: the Flower ClientApp, model loading, local training and evaluation."""
